"""Model files (classifiers, later tokenizers and checkpoints) published like shards: a
content-addressed file plus a manifest, so the model's DataVersion is its content hash."""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

from resources.storage import Manifest, ShardInfo, ShardStore, sha256_bytes

MODEL = "model"


def publish_model(store: ShardStore, asset: str, local_path: Path, manifest: Manifest) -> Manifest:
    data = local_path.read_bytes()
    digest = sha256_bytes(data)
    name = f"model-{digest[:16]}{local_path.suffix}"
    store.write_bytes(posixpath.join(store.partition_dir(asset, None), name), data)
    manifest.files = [ShardInfo(path=name, rows=0, bytes=len(data), sha256=digest, table=MODEL)]
    return store.commit(manifest)


def fetch_model(store: ShardStore, asset: str, cache_dir: str | None = None) -> tuple[Path, Manifest]:
    """A local copy of the asset's current model file (fastText loads from local paths only)."""
    manifest = store.read_manifest(asset, None)
    if manifest is None or MODEL not in manifest.tables():
        raise FileNotFoundError(f"{asset} has no published model: materialize it first")
    (path,) = store.shard_paths(manifest, MODEL)
    local = Path(cache_dir or tempfile.gettempdir()) / "crawl2ckpt-models" / posixpath.basename(path)
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_suffix(local.suffix + ".part")
        tmp.write_bytes(store.read_bytes(path))
        tmp.replace(local)
    return local, manifest
