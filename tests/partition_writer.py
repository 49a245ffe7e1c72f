"""A second process writing one asset partition, for the two-writer tests: `python -m
tests.partition_writer ROOT ASSET PARTITION LABEL SHARDS PAUSE_S TIMEOUT_S [RELEASE]` writes SHARDS
shards of content derived from LABEL, pausing PAUSE_S before each, holding the partition's lock, waits
for the file RELEASE to exist if one is named (so a test decides when it lets go, whatever the load),
commits, and prints the manifest's data version (or the error, with exit status 3)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

from resources.common.partition_lock import PartitionLocked
from resources.common.storage import Manifest, ShardStore


def frame(label: str, index: int) -> pl.DataFrame:
    return pl.DataFrame({"doc_id": [f"{label}-{index}-{i}" for i in range(50)], "text": [label * 20] * 50})


def main(
    root: str, asset: str, partition: str, label: str, shards: int, pause_s: float, timeout_s: float, release: str = ""
) -> int:
    store = ShardStore(root, lock_timeout_s=timeout_s)
    try:
        with store.writing(asset, partition, f"writer {label}", log=lambda m: print(m, flush=True)):
            print("holding", flush=True)
            files = []
            for index in range(shards):
                time.sleep(pause_s)
                files.append(store.write_parquet_shard(asset, partition, index, frame(label, index)))
            while release and not Path(release).exists():
                time.sleep(0.05)
            manifest = store.commit(Manifest(asset=asset, partition=partition, files=files, run_id=label))
    except PartitionLocked as exc:
        print(f"refused: {exc}", flush=True)
        return 3
    print(f"committed {manifest.data_version}", flush=True)
    return 0


if __name__ == "__main__":
    root, asset, partition, label, shards, pause_s, timeout_s, *release = sys.argv[1:]
    sys.exit(main(root, asset, partition, label, int(shards), float(pause_s), float(timeout_s), *release))
