"""Where the project is and how a settings file's relative paths resolve, without loading the
settings: the audit CLI reads the catalog's path from the YAML and must start in a blink."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


def absolute(path: str, base: Path = PROJECT_ROOT) -> str:
    """Relative local paths are taken from the project root, not the current directory."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The settings file named by the argument, else `$CRAWL2CKPT_CONFIG`, else configs/demo.yaml."""
    config_path = Path(path or os.environ.get("CRAWL2CKPT_CONFIG") or DEFAULT_CONFIG)
    if not config_path.is_file():
        raise FileNotFoundError(f"crawl2ckpt config not found: {config_path}")
    return config_path


def read_config(path: str | os.PathLike[str] | None = None) -> dict:
    """The settings file's raw content (not validated)."""
    return yaml.safe_load(config_file(path).read_text()) or {}
