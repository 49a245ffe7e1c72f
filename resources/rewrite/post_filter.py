"""What a generated output must pass to be kept. Each rule has a stable `rewrite_<rule>` key (the
`rule` column of removed rows, and a metadata key) with the measured value in `detail`."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from resources.filter.gopher import GopherRepetition, GopherRepetitionSettings
from resources.filter.text_units import DocView

TOO_SHORT = "rewrite_too_short"
TRUNCATED = "rewrite_truncated"
REFUSAL = "rewrite_refusal"
REPETITION = "rewrite_gopher_repetition"
DUPLICATE_OUTPUT = "rewrite_duplicate_output"  # judged across a shard's outputs, by the rewriter


class PostFilterSettings(BaseModel):
    """What an output must pass to be kept; each check can be turned off."""

    model_config = ConfigDict(extra="forbid")

    min_chars: int = Field(default=1, ge=1, description="after stripping whitespace")
    drop_truncated: bool = Field(default=True, description="drop outputs that hit max_tokens (finish_reason=length)")
    repetition: GopherRepetitionSettings | None = Field(default_factory=GopherRepetitionSettings)
    repetition_min_words: int = Field(
        default=50,
        ge=1,
        description="shorter outputs are not judged for repetition: Gopher's top n-gram fractions are "
        "calibrated on documents of 50+ words (one 3-gram of a 15-word answer is already 20% of it)",
    )
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bI (?:cannot|can't|can ?not|am unable to|'m unable to|am not able to)\b",
            r"\bAs an AI\b",
            r"\bI'm sorry, but\b",
            r"\bI apologi[sz]e\b",
            r"\blanguage model\b",
        ]
    )
    refusal_scan_chars: int = Field(default=300, ge=1, description="refusals are looked for at the start only")

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            re.compile(pattern)
        return patterns


class PostFilter:
    """`(text, finish_reason) -> None` (keep) or `(rule, detail)`. Rules, in order: too short,
    truncated, refusal, repetition (Gopher's rules, the usual failure of sampling loops)."""

    def __init__(self, settings: PostFilterSettings) -> None:
        self.settings = settings
        self._refusal = (
            re.compile("|".join(f"(?:{p})" for p in settings.refusal_patterns), re.IGNORECASE)
            if settings.refusal_patterns
            else None
        )
        self._repetition = GopherRepetition(settings.repetition) if settings.repetition else None

    def __call__(self, text: str, finish_reason: str) -> tuple[str, str] | None:
        s = self.settings
        if len(text) < s.min_chars:
            return TOO_SHORT, f"chars={len(text)}<{s.min_chars}"
        if s.drop_truncated and finish_reason == "length":
            return TRUNCATED, "finish_reason=length"
        if self._refusal and (match := self._refusal.search(text[: s.refusal_scan_chars])):
            return REFUSAL, f"matched {match.group(0)!r}"
        if self._repetition:
            doc = DocView(text)
            if len(doc.words) >= s.repetition_min_words and (failure := self._repetition(doc)):
                return REPETITION, failure.detail
        return None
