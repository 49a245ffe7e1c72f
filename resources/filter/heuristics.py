"""Heuristic quality rules, composed: Gopher repetition, Gopher quality, C4 line filtering, FineWeb.

Why these modules and not datatrove: the rules are the ones FineWeb applies (via datatrove,
whose defaults every threshold here keeps, so `bench/filter.py` can compare decisions one
for one), but they share one word tokenization and one set of line splits per document
(`resources.filter.text_units`) instead of re-tokenizing per rule with spaCy, and they count
repetitions with hashing instead of string joins. The C4 rule edits the text (it removes
lines), as datatrove's does; the rules after it see the edited text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Self

from pydantic import Field, model_validator

from resources.filter.c4 import C4Lines, C4Settings
from resources.filter.fineweb import FineWebQuality, FineWebSettings
from resources.filter.gopher import GopherQuality, GopherQualitySettings, GopherRepetition, GopherRepetitionSettings
from resources.filter.rules import Failure, Rule, RuleSettings
from resources.filter.text_units import DocView

RuleName = Literal["gopher_repetition", "gopher_quality", "c4", "fineweb"]
RULES: dict[str, Callable[[HeuristicSettings], Rule]] = {
    "gopher_repetition": lambda s: GopherRepetition(s.gopher_repetition),
    "gopher_quality": lambda s: GopherQuality(s.gopher_quality),
    "c4": lambda s: C4Lines(s.c4),
    "fineweb": lambda s: FineWebQuality(s.fineweb),
}


class HeuristicSettings(RuleSettings):
    """Which rules run, in which order (FineWeb's by default), and each rule's thresholds."""

    enabled: list[RuleName] = Field(default_factory=lambda: ["gopher_repetition", "gopher_quality", "c4", "fineweb"])
    gopher_repetition: GopherRepetitionSettings = Field(default_factory=GopherRepetitionSettings)
    gopher_quality: GopherQualitySettings = Field(default_factory=GopherQualitySettings)
    c4: C4Settings = Field(default_factory=C4Settings)
    fineweb: FineWebSettings = Field(default_factory=FineWebSettings)

    @model_validator(mode="after")
    def _each_rule_once(self) -> Self:
        repeated = sorted({name for name in self.enabled if self.enabled.count(name) > 1})
        if repeated:
            raise ValueError(f"rules enabled more than once: {', '.join(repeated)}")
        return self


class HeuristicFilter:
    """The enabled rules, in order, on one document at a time; the first failure drops it."""

    def __init__(self, settings: HeuristicSettings | None = None) -> None:
        self.settings = settings or HeuristicSettings()
        self.rules: list[Rule] = [RULES[name](self.settings) for name in self.settings.enabled]
        self._size_guard = next((rule for rule in self.rules if isinstance(rule, GopherQuality)), None)

    def apply(self, text: str) -> tuple[str, Failure | None]:
        """(text, possibly edited by C4; the failure that drops it, or None). Long documents meet
        Gopher quality's cheap size guard first (`GopherQuality.oversized`)."""
        if self._size_guard is not None and (oversized := self._size_guard.oversized(text)):
            return text, oversized
        doc = DocView(text)
        for rule in self.rules:
            if failure := rule(doc):
                return doc.text, failure
        return doc.text, None
