"""FineWeb's own rules (Penedo et al. 2024), as datatrove's FineWebQualityFilter applies them.

Removal keys: `fineweb_empty`, `fineweb_line_punct_ratio`, `fineweb_short_line_ratio`,
`fineweb_char_dup_ratio`, `fineweb_list_ratio` (datatrove's names), and `fineweb_no_words`
(lines but no words, where datatrove would divide by zero).
"""

from __future__ import annotations

from pydantic import Field

from resources.filter.rules import Finding, Rule, RuleSettings, above, fmt
from resources.filter.text_units import SENTENCE_TERMINALS, DocView, duplicates


class FineWebSettings(RuleSettings):
    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: str | None = Field(default=None, description="line-final characters; default: sentence terminals")
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class FineWebQuality(Rule):
    """Drops documents whose lines mostly lack end punctuation, are mostly short, repeat
    each other, or that are lists (many newlines per word)."""

    name = "fineweb"
    family = "fineweb"

    def __init__(self, settings: FineWebSettings | None = None) -> None:
        self.settings = settings or FineWebSettings()
        stop = self.settings.stop_chars
        self._stop_chars = frozenset(stop) if stop is not None else SENTENCE_TERMINALS

    def check(self, doc: DocView) -> Finding | None:
        s, text = self.settings, doc.text
        lines = [line for line in text.split("\n") if not line.isspace() and line]
        if not lines:
            return "empty", "empty"
        ratio = sum(1 for line in lines if line[-1] in self._stop_chars) / len(lines)
        if ratio < s.line_punct_thr and not (ratio == 0 and s.line_punct_exclude_zero):
            return "line_punct_ratio", f"line_punct_ratio={fmt(ratio)}<{fmt(s.line_punct_thr)}"
        short = sum(1 for line in lines if len(line) <= s.short_line_length) / len(lines)
        dup_chars = duplicates(lines)[1]
        found = above("short_line_ratio", "short_line_ratio", short, s.short_line_thr) or above(
            "char_dup_ratio", "char_dup_ratio", dup_chars / (len(text) - text.count("\n")), s.char_duplicates_ratio
        )
        if found:
            return found
        n_words = len(doc.words)
        if n_words == 0:
            return "no_words", "no_words"
        return above("list_ratio", "list_ratio", text.count("\n") / n_words, s.new_line_ratio)
