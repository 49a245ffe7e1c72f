"""Code versions that include the settings shaping an asset's output, so that changing a
threshold or an extractor makes exactly that asset stale (and its children once its data
actually changes), while a change of worker count or timeout makes nothing stale."""

from __future__ import annotations

from collections.abc import Mapping

from resources.storage import stable_hash


def config_hash(shaping: Mapping[str, object]) -> str:
    return stable_hash(dict(shaping))[:12]


def code_version(logic_version: str, shaping: Mapping[str, object]) -> str:
    """`logic_version` is bumped by hand when the asset's code changes what it writes."""
    return f"{logic_version}-{config_hash(shaping)}"
