"""Pipeline settings, loaded once when the code location is built.

Settings that shape an asset's output feed its `code_version`, and Dagster only reads
code versions at definition time, so these live in a YAML file chosen by
`CRAWL2CKPT_CONFIG` rather than in per-run config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageSettings(_Section):
    root: str = ".data"
    storage_options: dict[str, object] = Field(default_factory=dict)


class CatalogSettings(_Section):
    path: str = ".data/catalog.duckdb"


class SourceSettings(_Section):
    """Where the crawl sensor looks for new files."""

    url: str = "data/sample"
    patterns: list[str] = Field(default_factory=lambda: ["*.warc.gz", "*.warc", "*.wet.gz", "*.warc.wet.gz", "*.wet"])
    listing: str | None = None
    listing_base_url: str = ""
    crawl: str | None = None
    files_per_partition: int = Field(default=2, ge=1)
    max_files_per_tick: int = Field(default=1000, ge=1)
    interval_seconds: int = Field(default=60, ge=1)
    sensor_running: bool = Field(default=False, description="start the sensor with the daemon, no click needed")
    storage_options: dict[str, object] = Field(default_factory=dict)


class IngestSettings(_Section):
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"
    max_record_bytes: int = Field(default=5_000_000, ge=1024)
    min_text_chars: int = Field(default=1, ge=1)
    max_replacement_ratio: float = Field(default=0.02, ge=0, le=1)
    html_content_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    shard_rows: int = Field(default=20_000, ge=1)
    workers: int = Field(default=0, ge=0, description="extraction processes; 0 = one per core")
    doc_timeout_s: float = Field(default=20.0, gt=0)

    def output_shaping(self) -> dict[str, object]:
        """The settings whose change alters the documents written (not how fast)."""
        return self.model_dump(exclude={"workers", "doc_timeout_s"})


class Settings(_Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)

    def resolved(self, base: Path = PROJECT_ROOT) -> Settings:
        """Relative local paths are taken from the project root, not the current directory."""
        return self.model_copy(
            update={
                "storage": self.storage.model_copy(update={"root": _absolute(self.storage.root, base)}),
                "catalog": self.catalog.model_copy(update={"path": _absolute(self.catalog.path, base)}),
                "source": self.source.model_copy(
                    update={
                        "url": _absolute(self.source.url, base),
                        "listing": self.source.listing and _absolute(self.source.listing, base),
                    }
                ),
            }
        )


def _absolute(path: str, base: Path) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the YAML named by the argument, else `$CRAWL2CKPT_CONFIG`, else configs/demo.yaml."""
    config_path = Path(path or os.environ.get("CRAWL2CKPT_CONFIG") or DEFAULT_CONFIG)
    if not config_path.is_file():
        raise FileNotFoundError(f"crawl2ckpt config not found: {config_path}")
    raw = yaml.safe_load(config_path.read_text()) or {}
    return Settings.model_validate(raw).resolved()
