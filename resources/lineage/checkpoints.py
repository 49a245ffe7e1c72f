"""Checkpoints as the lineage catalog records them, read from their step manifests (the
`manifest.json` every checkpoint directory ends with, see resources/train/checkpoints.py) without
loading PyTorch: one catalog row per step directory, and one input row per token shard file it
trained on, its own or inherited from the generation it continued."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from resources.common.storage import UNPARTITIONED, ShardStore

STEP_MANIFEST = "manifest.json"


def checkpoint_id(path: str) -> str:
    """`run-<hash>/step-NNNNNN`: a checkpoint's name wherever its directory lives (the store, a
    local mirror, another machine)."""
    parts = path.rstrip("/").split("/")
    return "/".join(parts[-2:])


def shard_location(path: str) -> tuple[str, str, str]:
    """(asset, crawl batch, file) of a token shard file from its path: `.../<asset>/<batch>/<file>`."""
    asset, crawl_batch, file = path.replace("\\", "/").rstrip("/").split("/")[-3:]
    return asset, crawl_batch, file


@dataclass(frozen=True)
class CheckpointRecord:
    row: dict[str, Any]  # the `checkpoints` table's columns
    inputs: list[dict[str, Any]]  # the `checkpoint_inputs` table's columns, less `checkpoint`


def checkpoint_record(name: str, manifest: dict[str, Any]) -> CheckpointRecord:
    """The catalog rows of one checkpoint from its step manifest. `trained_on` lists every shard of
    the whole lineage; `data` the shards this generation sampled, by source, with their tokens."""
    own: dict[tuple[str, str], dict[str, Any]] = {}
    for source in manifest.get("data", []):
        for f in source.get("files", []):
            own[(f["path"], f["data_version"])] = {"source": source["source"], "train_tokens": f.get("train_tokens")}
    inputs = []
    for entry in manifest.get("trained_on", []):
        asset, crawl_batch, file = shard_location(entry["path"])
        mine = own.get((entry["path"], entry["data_version"]))
        inputs.append(
            {
                "source": mine["source"] if mine else None,
                "asset": asset,
                "crawl_batch": crawl_batch,
                "file": file,
                "data_version": entry["data_version"],
                "train_tokens": mine["train_tokens"] if mine else None,
                "inherited": mine is None,
            }
        )
    parent = manifest.get("continued_from") or None
    losses = manifest.get("loss_history") or []
    row = {
        "checkpoint": name,
        "run": name.split("/")[0],
        "step": manifest.get("step"),
        "created_at": manifest.get("created_at"),
        "continued_from": checkpoint_id(parent["path"]) if parent else None,
        "tokens_seen": manifest.get("tokens_seen"),
        "total_tokens_seen": manifest.get("total_tokens_seen"),
        "final_loss": losses[-1] if losses else None,
        "config": json.dumps(manifest.get("config", {}), sort_keys=True),
        "model": json.dumps(manifest.get("model", {}), sort_keys=True),
    }
    return CheckpointRecord(row, inputs)


def step_manifests(store: ShardStore, asset: str, run: str = "run-*") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every checkpoint the store holds (of one run, when named), as (name, step manifest), by name:
    a run's steps in order."""
    pattern = store.path(asset, UNPARTITIONED, run, "step-*", STEP_MANIFEST)
    for path in sorted(store.fs.glob(pattern)):
        yield checkpoint_id(posixpath.dirname(path)), json.loads(store.read_bytes(path))
