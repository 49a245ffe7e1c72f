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
    """A model folder (a tokenizer or a model saved with save_pretrained), as `model-<hash>/<files>`,
    the hash over every file's name and content. Files are streamed: a model of many GB is never
    held in memory."""
    digests = {
        p.relative_to(local_dir).as_posix(): (p, file_sha256(p))
        for p in sorted(p for p in local_dir.rglob("*") if p.is_file())
    }
    folder = (
        "model-" + hashlib.sha256(b"".join(n.encode() + d.encode() for n, (_, d) in digests.items())).hexdigest()[:16]
    )
    directory = store.partition_dir(asset, None)
    manifest.files = []
    for name, (path, digest) in digests.items():
        store.write_file(posixpath.join(directory, folder, name), path)
        manifest.files.append(
            ShardInfo(path=f"{folder}/{name}", rows=0, bytes=path.stat().st_size, sha256=digest, table=MODEL)
        )
    return store.commit(manifest)


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_model(store: ShardStore, asset: str) -> tuple[Path, Manifest]:
    """A local path to the asset's current model: the file, or the folder for a published folder."""
    manifest = store.read_manifest(asset, None)
    if manifest is None or MODEL not in manifest.tables():
        raise FileNotFoundError(f"{asset} has no published model: materialize it first")
    first = manifest.files[0].path
    return store.local_partition(manifest) / first.split("/", 1)[0], manifest
