"""What every heuristic rule shares: the failure it reports, the threshold comparisons that write
its detail, and the base of its settings.

A rule belongs to a family (`gopher`, `c4`, `fineweb`) and drops a document for one check at a
time; the removed table stores the check as a stable `<family>_<check>` key, named as datatrove
names it where datatrove has the check (`gopher_short_doc`, `c4_too_few_sentences`,
`fineweb_line_punct_ratio`), so drops group by key across runs and settings, and the measured
value against its threshold goes to `detail` ("words=12<50").
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict

from resources.filter.text_units import DocView

Finding = tuple[str, str]  # (check, detail): what a rule's check returns, before the key is made


class Failure(NamedTuple):
    """Why a rule dropped a document."""

    rule: str  # the rule's name in `heuristics.enabled` ("gopher_quality")
    key: str  # the removal key: "<family>_<check>" ("gopher_short_doc")
    detail: str  # the measured value against its threshold ("words=12<50")


class Rule:
    """A heuristic rule: `rule(doc)` is None (keep) or the Failure that drops the document."""

    name: ClassVar[str]
    family: ClassVar[str]

    def __call__(self, doc: DocView) -> Failure | None:
        found = self.check(doc)
        return self.failure(*found) if found else None

    def check(self, doc: DocView) -> Finding | None:
        raise NotImplementedError

    def failure(self, check: str, detail: str) -> Failure:
        return Failure(self.name, f"{self.family}_{check}", detail)


class RuleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


def fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def above(check: str, name: str, value: float, limit: float | None) -> Finding | None:
    """`check` fails when `value` (called `name` in the detail) exceeds `limit`; None turns it off."""
    return (check, f"{name}={fmt(value)}>{fmt(limit)}") if limit is not None and value > limit else None


def below(check: str, name: str, value: float, limit: float | None) -> Finding | None:
    return (check, f"{name}={fmt(value)}<{fmt(limit)}") if limit is not None and value < limit else None
