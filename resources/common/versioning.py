"""Code versions that include the settings shaping an asset's output, so that changing a
threshold or an extractor makes exactly that asset stale (and its children once its data
actually changes), while a change of worker count or timeout makes nothing stale."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from resources.common.storage import UNPARTITIONED, Manifest, ShardInfo, sha256_bytes, stable_hash


def config_hash(shaping: Mapping[str, object]) -> str:
    return stable_hash(dict(shaping))[:12]


def file_digest(path: str) -> str | None:
    """A local input file by content, for the settings that name it (eval sets, reference text, a
    model): the first 16 hex digits of its sha256; None for a URL or a file that is missing."""
    try:
        return sha256_bytes(Path(path).read_bytes())[:16]
    except OSError:
        return None


def code_version(logic_version: str, shaping: Mapping[str, object]) -> str:
    """`logic_version` is bumped by hand when the asset's code changes what it writes."""
    return f"{logic_version}-{config_hash(shaping)}"


@dataclass(frozen=True)
class OutputVersion:
    """What decides an asset's output besides its inputs: the version of its logic and the settings
    that shape what it writes. Built once when the code location loads; every manifest the asset
    commits carries the same code version and config hash Dagster was given."""

    logic: str
    shaping: Mapping[str, object] = field(default_factory=dict)

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.shaping)

    @cached_property
    def code_version(self) -> str:
        return code_version(self.logic, self.shaping)

    def manifest(
        self,
        asset: str,
        partition: str | None,
        run_id: str,
        files: Iterable[ShardInfo] = (),
        inputs: Mapping[str, str] | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> Manifest:
        return Manifest(
            asset=asset,
            partition=UNPARTITIONED if partition is None else partition,
            files=list(files),
            config_hash=self.config_hash,
            code_version=self.code_version,
            inputs=dict(inputs or {}),
            stats=dict(stats or {}),
            run_id=run_id,
        )
