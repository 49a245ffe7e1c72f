"""Model files and folders (classifiers, tokenizers, checkpoints) published like shards: content-
addressed files plus a manifest, so a model's DataVersion is its content hash, and a local copy is
fetched once per version (fastText and transformers load from local paths only)."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path

from resources.common.storage import Manifest, ShardInfo, ShardStore, sha256_bytes

MODEL = "model"


def publish_model(store: ShardStore, asset: str, local_path: Path, manifest: Manifest) -> Manifest:
    """A single model file, as `model-<sha>.<suffix>`."""
    data = local_path.read_bytes()
    digest = sha256_bytes(data)
    name = f"model-{digest[:16]}{local_path.suffix}"
    store.write_bytes(posixpath.join(store.partition_dir(asset, None), name), data)
    manifest.files = [ShardInfo(path=name, rows=0, bytes=len(data), sha256=digest, table=MODEL)]
    return store.commit(manifest)


def publish_directory(store: ShardStore, asset: str, local_dir: Path, manifest: Manifest) -> Manifest:
    """A model folder (e.g. a tokenizer saved with save_pretrained), as `model-<hash>/<files>`,
    the hash over every file's name and content."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    contents = {p.relative_to(local_dir).as_posix(): p.read_bytes() for p in files}
    folder = (
        "model-"
        + hashlib.sha256(
            b"".join(name.encode() + sha256_bytes(data).encode() for name, data in contents.items())
        ).hexdigest()[:16]
    )
    directory = store.partition_dir(asset, None)
    manifest.files = []
    for name, data in contents.items():
        store.write_bytes(posixpath.join(directory, folder, name), data)
        manifest.files.append(
            ShardInfo(path=f"{folder}/{name}", rows=0, bytes=len(data), sha256=sha256_bytes(data), table=MODEL)
        )
    return store.commit(manifest)


def fetch_model(store: ShardStore, asset: str) -> tuple[Path, Manifest]:
    """A local path to the asset's current model: the file, or the folder for a published folder."""
    manifest = store.read_manifest(asset, None)
    if manifest is None or MODEL not in manifest.tables():
        raise FileNotFoundError(f"{asset} has no published model: materialize it first")
    first = manifest.files[0].path
    return store.local_partition(manifest) / first.split("/", 1)[0], manifest
