"""Gopher's rules (Rae et al. 2021): repetition (repeated lines, paragraphs, n-grams) and quality
(document length, word length, symbol and bullet spam, non-words, stop words), with datatrove's
defaults and check names as removal keys (`gopher_dup_line_frac`, `gopher_short_doc`, ...); and
three keys datatrove does not have, where it would divide by zero or where our size guard
decides: `gopher_empty` (no text), `gopher_no_words` (only symbols, with the word minimum off),
`gopher_too_many_word_chars`.
"""

from __future__ import annotations

import re
import string
from typing import Self

import numpy as np
from pydantic import Field, model_validator

from resources.filter.rules import Failure, Finding, Rule, RuleSettings, above, below, fmt
from resources.filter.text_units import SENTENCE_TERMINALS, DocView, duplicates

# Gopher's "symbol" characters: a word made only of these is not counted as a word.
# datatrove's set (ASCII and CJK punctuation, control characters, sentence terminals).
_CONTROL = "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
_WIDE_PUNCTUATION = "«´»–—’“”„…∶━►、。〈〉《》「」【】！％（），．：；？～"
GOPHER_SYMBOLS = string.punctuation + _WIDE_PUNCTUATION + _CONTROL + "".join(SENTENCE_TERMINALS)


class GopherRepetitionSettings(RuleSettings):
    """Gopher (Rae et al. 2021, table A1) repetition limits; None turns a check off."""

    dup_line_frac: float | None = 0.3
    dup_para_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    dup_para_char_frac: float | None = 0.2
    top_n_grams: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    @model_validator(mode="after")
    def _positive_n(self) -> Self:
        if any(n < 1 for n in (*self.top_n_grams, *self.dup_n_grams)):
            raise ValueError("n-gram sizes must be >= 1")
        return self


_PARAGRAPH_BREAK = re.compile(r"\n{2,}")


class GopherRepetition(Rule):
    """Drops documents made of repeated lines, paragraphs or n-grams (boilerplate, spam).

    Fractions of characters are taken over the whole text, as in datatrove. The n-gram measures
    come from a compiled kernel (`resources.filter.ngram_repetition`, imported when a rule is
    built: numba takes a second to import, and the settings import this module).
    """

    name = "gopher_repetition"
    family = "gopher"

    def __init__(self, settings: GopherRepetitionSettings | None = None) -> None:
        self.settings = settings or GopherRepetitionSettings()
        self._top = sorted(self.settings.top_n_grams.items())
        self._dup = sorted(self.settings.dup_n_grams.items())
        self._top_sizes = np.array([n for n, _ in self._top], dtype=np.int64)
        self._dup_sizes = np.array([n for n, _ in self._dup], dtype=np.int64)
        from resources.filter.ngram_repetition import repetition

        self._repetition = repetition

    def check(self, doc: DocView) -> Finding | None:
        s, text = self.settings, doc.text
        if not text:
            return "empty", "empty"
        chars = len(text)
        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        dups, dup_chars = duplicates(paragraphs)
        found = above("dup_para_frac", "dup_para_frac", dups / len(paragraphs), s.dup_para_frac) or above(
            "dup_para_char_frac", "dup_para_char_frac", dup_chars / chars, s.dup_para_char_frac
        )
        if found:
            return found
        lines = [line for line in text.split("\n") if line]  # = re.split("\n+", text), 10x faster:
        if text.startswith("\n"):  # a leading or trailing newline leaves an empty line there
            lines.insert(0, "")
        if text.endswith("\n"):
            lines.append("")
        dups, dup_chars = duplicates(lines)
        found = above("dup_line_frac", "dup_line_frac", dups / len(lines), s.dup_line_frac) or above(
            "dup_line_char_frac", "dup_line_char_frac", dup_chars / chars, s.dup_line_char_frac
        )
        if found:
            return found
        words = doc.words
        if not words:
            return None
        joined = np.frombuffer(" ".join(words).encode(), dtype=np.uint8)  # no word holds a space
        top, dup = self._repetition(joined, self._top_sizes, self._dup_sizes)
        for (n, limit), gram_chars in zip(self._top, top.tolist(), strict=True):
            if gram_chars < 0:
                break  # fewer than n words
            if found := above(f"top_{n}_gram", f"top_{n}_gram_char_frac", gram_chars / chars, limit):
                return found
        for (n, limit), repeated in zip(self._dup, dup.tolist(), strict=True):
            if found := above(f"duplicated_{n}_n_grams", f"dup_{n}_gram_char_frac", repeated / chars, limit):
                return found
        return None


class GopherQualitySettings(RuleSettings):
    """Gopher quality bounds (datatrove's GopherQualityFilter defaults); None turns a check off."""

    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = Field(
        default=0.8, description="datatrove calls it max_non_alpha_words_ratio; it is a lower bound"
    )
    min_stop_words: int | None = 2
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])


class GopherQuality(Rule):
    """Drops documents that do not read like prose: too short or long, odd word lengths,
    hashtag or ellipsis spam, all bullets, mostly non-words, no English stop words.

    Words made only of symbols do not count as words for the length checks; every token
    counts for the ratios, as in datatrove. Per-word tests run once per distinct word.
    """

    name = "gopher_quality"
    family = "gopher"

    def __init__(self, settings: GopherQualitySettings | None = None) -> None:
        self.settings = settings or GopherQualitySettings()
        self._stop_words = frozenset(self.settings.stop_words)

    def check(self, doc: DocView) -> Finding | None:
        s, text = self.settings, doc.text
        n_words = len(doc.words)
        counted = counted_chars = alpha = 0
        for word, count in doc.word_counts.items():
            if word.isalpha():  # most words: counted (no Gopher symbol is a letter) and alphabetic
                counted += count
                counted_chars += count * len(word)
                alpha += count
                continue
            if word.strip(GOPHER_SYMBOLS):
                counted += count
                counted_chars += count * len(word)
            if any(map(str.isalpha, word)):
                alpha += count
        found = below("short_doc", "words", counted, s.min_doc_words) or above(
            "long_doc", "words", counted, s.max_doc_words
        )
        if found:
            return found
        if counted == 0:  # no words at all, or only symbols, with min_doc_words off
            return "no_words", "no_words"
        mean_length = counted_chars / counted
        found = (
            below("below_avg_threshold", "mean_word_length", mean_length, s.min_avg_word_length)
            or above("above_avg_threshold", "mean_word_length", mean_length, s.max_avg_word_length)
            or above("too_many_hashes", "hash_word_ratio", text.count("#") / n_words, s.max_symbol_word_ratio)
            or above(
                "too_many_ellipsis",
                "ellipsis_word_ratio",
                (text.count("...") + text.count("…")) / n_words,
                s.max_symbol_word_ratio,
            )
        )
        if found:
            return found
        if s.max_bullet_lines_ratio is not None or s.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines()
            bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
            ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
            found = above(
                "too_many_bullets", "bullet_lines_ratio", bullets / len(lines), s.max_bullet_lines_ratio
            ) or above(
                "too_many_end_ellipsis", "ellipsis_lines_ratio", ellipses / len(lines), s.max_ellipsis_lines_ratio
            )
            if found:
                return found
        found = below("below_alpha_threshold", "alpha_words_ratio", alpha / n_words, s.min_alpha_words_ratio)
        if found:
            return found
        if s.min_stop_words is not None:
            stop_words = len(self._stop_words & doc.word_counts.keys())
            return below("enough_stop_words", "stop_words", stop_words, s.min_stop_words)
        return None

    def oversized(self, text: str) -> Failure | None:
        """A cheap early drop for long documents the word bounds would drop anyway.

        A 10 MB page costs seconds to tokenize and count n-grams over, but three bounds need
        no tokens. Every whitespace chunk holding a word character (neither space nor symbol)
        yields at least one counted word, and every word character lies in a counted word.
        So more such chunks than `max_doc_words`, or more word characters than
        `max_doc_words * max_avg_word_length`, fail the word limit or the mean-length limit;
        fewer word characters than `min_doc_words` fail the minimum. Only the reported
        check can differ from a full run (an earlier rule might have fired first, or the
        other word bound); the decision cannot.
        """
        s = self.settings
        if s.max_doc_words is None or len(text) <= s.max_doc_words:
            return None
        word_chars = _word_chars(text)
        if s.max_avg_word_length is not None and word_chars > s.max_doc_words * s.max_avg_word_length:
            limit = fmt(s.max_doc_words * s.max_avg_word_length)
            return self.failure("too_many_word_chars", f"word_chars={word_chars}>{limit}")
        if s.min_doc_words is not None and word_chars < s.min_doc_words:
            return self.failure("short_doc", f"words<={word_chars}<{s.min_doc_words}")
        chunks = text.split()
        if len(chunks) > s.max_doc_words:
            words = sum(1 for chunk in chunks if chunk.strip(GOPHER_SYMBOLS))
            if words > s.max_doc_words:
                return self.failure("long_doc", f"words>={words}>{s.max_doc_words}")
        return None


# True at the code points of whitespace and Gopher symbols: counts a text's word characters
# with numpy (a regex or str.translate takes ~1 s per 10 MB, this ~0.1 s)
_NOT_WORD_CHAR = np.zeros(0x110000, dtype=bool)
_NOT_WORD_CHAR[[ord(c) for c in GOPHER_SYMBOLS]] = True
_NOT_WORD_CHAR[[p for p in range(0x3001) if chr(p).isspace()]] = True  # U+3000 is the last space


def _word_chars(text: str) -> int:
    """Characters that are neither whitespace nor Gopher symbols: each lies in a counted word."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return int(codes.size - np.count_nonzero(_NOT_WORD_CHAR[codes]))
