"""A model directory checked before any engine starts: an engine given a wrong path fails a
minute later and deep in a stack trace; `inspect_model` fails at once with what is missing, and
fingerprints the model so outputs generated with it can name it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_MIB = 1 << 20


class ModelPathError(ValueError):
    """The configured model directory is missing, unreadable or not a loadable model."""


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    tokenizer_path: Path
    max_position_embeddings: int | None
    fingerprint: str


def inspect_model(model_path: str | Path, tokenizer_path: str | Path | None = None) -> ModelInfo:
    """Check that a directory holds a model vLLM can load. The fingerprint hashes the config, the
    tokenizer files and, per weight file, its size and first and last MiB: cheap for a 100 GB
    model, yet any retraining changes it (every tensor moves)."""
    path = Path(model_path).expanduser()
    hint = "(build one with `python -m resources.llm.tiny_model DIR` or use a training checkpoint)"
    if not path.exists():
        raise ModelPathError(f"model directory {path} does not exist {hint}")
    if not path.is_dir():
        raise ModelPathError(f"model path {path} is not a directory {hint}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelPathError(f"model directory {path} is not readable")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_bytes())
    except FileNotFoundError:
        raise ModelPathError(f"{path} has no config.json: not a Hugging Face model directory {hint}") from None
    except (OSError, ValueError) as exc:
        raise ModelPathError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelPathError(f"{config_path} is not a model config (no model_type)")
    weights = sorted({p for pattern in _WEIGHT_PATTERNS for p in path.glob(pattern)})
    if not weights:
        raise ModelPathError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    tokenizer_dir = Path(tokenizer_path).expanduser() if tokenizer_path else path
    tokenizer_files = [tokenizer_dir / name for name in (*_TOKENIZER_FILES, "tokenizer_config.json")]
    if not any(p.is_file() for p in tokenizer_files[: len(_TOKENIZER_FILES)]):
        raise ModelPathError(f"{tokenizer_dir} has no tokenizer ({', '.join(_TOKENIZER_FILES)})")
    digest = hashlib.sha256()
    try:
        for file in [config_path, *(p for p in tokenizer_files if p.is_file())]:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        for file in weights:
            size = file.stat().st_size
            with open(file, "rb") as handle:
                head = handle.read(_MIB)
                handle.seek(max(size - _MIB, 0))
                tail = handle.read(_MIB)
            digest.update(f"{file.name}\0{size}\0".encode() + head + tail)
    except OSError as exc:
        raise ModelPathError(f"cannot read model files in {path}: {exc}") from exc
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    max_positions = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    return ModelInfo(path.resolve(), tokenizer_dir.resolve(), max_positions, digest.hexdigest()[:16])


def load_tokenizer(info: ModelInfo) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer  # slow import, only where a tokenizer is needed

    try:
        return AutoTokenizer.from_pretrained(str(info.tokenizer_path), trust_remote_code=False)
    except Exception as exc:  # any loader failure is one message: the files are not a usable tokenizer
        raise ModelPathError(f"cannot load the tokenizer in {info.tokenizer_path}: {exc}") from exc
