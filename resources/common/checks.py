"""What an engine's check found, for its asset to report as a Dagster asset check (engines do not
import Dagster)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    metadata: dict[str, object] = field(default_factory=dict)
    warn_only: bool = False  # a failure warns instead of failing the check
