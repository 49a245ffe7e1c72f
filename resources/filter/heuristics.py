"""Heuristic quality rules: Gopher repetition, Gopher quality, C4 line filtering, FineWeb.

Why this module and not datatrove: the rules are the ones FineWeb applies (via datatrove,
whose defaults every threshold here keeps, so `bench/filter.py` can compare decisions one
for one), but they share one word tokenization and one set of line splits per document
instead of re-tokenizing per rule with spaCy, and they count repetitions with hashing
instead of string joins. Every drop says which rule fired and the value it measured
against which threshold ("dup_line_frac=0.41>0.3"), which is what the removed-rows table
stores.

Each rule is a small callable object: `rule(doc) -> None` (keep) or `(rule_name, detail)`
(drop). The C4 rule also edits the text (it removes lines), as datatrove's does; the rules
after it see the edited text. `HeuristicFilter` runs the enabled rules in order.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import ClassVar, Literal, Self

import numpy as np
import regex
from pydantic import BaseModel, ConfigDict, Field, model_validator

Failure = tuple[str, str]  # (rule name, detail: measured value vs threshold)


# --------------------------------------------------------------------------- characters

# Sentence terminals per Unicode (".", "!", "?", "。", "؟", "।", ...): the end-of-line marks of
# FineWeb's punctuation rule and the sentence boundaries of C4's sentence count. (datatrove's
# and spaCy's lists are this property from an older Unicode, plus three Khmer signs.)
SENTENCE_TERMINALS = frozenset(regex.findall(r"\p{Sentence_Terminal}", "".join(map(chr, range(0x20000)))))

# Gopher's "symbol" characters: a word made only of these is not counted as a word.
# datatrove's set (ASCII and CJK punctuation, control characters, sentence terminals).
_CONTROL = "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)]))
_WIDE_PUNCTUATION = "«´»–—’“”„…∶━►、。〈〉《》「」【】！％（），．：；？～"
GOPHER_SYMBOLS = string.punctuation + _WIDE_PUNCTUATION + _CONTROL + "".join(SENTENCE_TERMINALS)


# --------------------------------------------------------------------------- word tokenizer
#
# A fast approximation of the spaCy tokenizer datatrove counts words with (spaCy's shared
# punctuation rules, without its per-language exception tables), so that word-based ratios
# agree: whitespace chunks; punctuation, quotes, brackets, currency and pictographs split off
# their edges one by one; "'s"/"n't"/"'re"-style endings split; a final period split unless it
# ends an abbreviation ("U.S.", "e.g.", "Mr.", "J."); hyphens, slashes, colons and commas split
# between letters ("state-of-the-art", "and/or"), not inside numbers ("1,000", "10:30",
# "COVID-19"); URLs kept whole. Most chunks are plain alphanumerics, or one followed by a
# comma or period, and take a fast path; edges are peeled in Python (a regex anchored at a
# chunk's end rescans it), only infixes use a regex.


_BMP_CATEGORIES = [unicodedata.category(chr(p)) for p in range(0x10000)]


def _bmp_class(*categories: str) -> str:
    """A `re` character-class body for Unicode categories, Basic Multilingual Plane only:
    `re` has no Unicode property classes, and keeps BMP classes as bitmaps but scans astral
    ranges one by one."""
    points = [p for p, category in enumerate(_BMP_CATEGORIES) if category.startswith(categories)]
    ranges: list[list[int]] = []
    for point in points:
        if ranges and point == ranges[-1][1] + 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges)


def _class(chars: str) -> str:
    return "".join(map(re.escape, chars))


_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_PUNCT = ",:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_EDGE_CHARS = frozenset(_PUNCT + _QUOTES)
_PREFIX_CHARS = _EDGE_CHARS | frozenset("§%=—–…")
_SUFFIX_CHARS = _EDGE_CHARS | frozenset("—–…")
_CONTRACTIONS = ("'s", "'S", "’s", "’S", "n't", "N'T", "n’t", "N’T", "'re", "'ve", "'ll", "'m", "'d")
_CONTRACTIONS += tuple(c.replace("'", "’") for c in _CONTRACTIONS[8:])
_CONTRACTIONS += tuple(c.upper() for c in _CONTRACTIONS[8:])
_LETTER = _bmp_class("L")
_LOWER = _bmp_class("Ll", "Lo")  # spaCy groups uncased scripts (CJK, Arabic, ...) with lower case
_UPPER_OR_UNCASED = _bmp_class("Lu", "Lo")
_EDGE = _class(_PUNCT + _QUOTES)
# pictographs (So): the BMP ones and the emoji blocks; °, a unit sign, stays on its number
_PICTOGRAPH = f"[{_bmp_class('So').replace('°', '')}\U0001f000-\U0001faff]"
_INFIX_HINT = re.compile(rf"[.…\-–—~:<>=/,+*^]|{_PICTOGRAPH}").search  # most cores hold none of these
# Every alternative starts with the character it consumes (lookbehinds come after it), so
# `re` can skip ahead to candidate characters instead of trying each alternative everywhere.
_AFTER_ALNUM = f"(?<=[{_LETTER}\\d]"
_INFIX = re.compile(  # one capturing group: re.split keeps the infixes as tokens
    rf"(\.\.+|…|{_PICTOGRAPH}|[+\-*^](?<=\d[+\-*^])(?=[\d-])"
    rf"|\.(?<=[{_LOWER}{_EDGE}]\.)(?=[{_UPPER_OR_UNCASED}{_EDGE}])|,(?<=[{_LETTER}],)(?=[{_LETTER}])"
    rf"|(?:---{_AFTER_ALNUM}---)|--{_AFTER_ALNUM}--)|——{_AFTER_ALNUM}——)|[-–—~]{_AFTER_ALNUM}[-–—~]))(?=[{_LETTER}])"
    rf"|[:<>=/]{_AFTER_ALNUM}[:<>=/])(?=[{_LETTER}]))"
)
_URL = re.compile(rf"(?:[\w+\-.]{{2,}}://)?(?:\S+@)?(?:[\w-]+\.)+[{_LOWER}]{{2,63}}(?::\d{{2,5}})?(?:[/?#]\S*)?")
# Abbreviations whose final period stays on the word: a lone lower-case letter ("p.") and the
# commonest Latin, title, month and company forms; upper-case ones ("U.S.", "J.") need no list.
_ABBREVIATION = re.compile(
    rf"[{_bmp_class('Ll')}]\.|(?:e\.g|i\.e|a\.m|p\.m|Mr|Mrs|Ms|Dr|Prof|St|Mt|Jr|Sr|Sen|Rep|Gov|Gen|Rev|Adm|Co|Corp"
    r"|Inc|Ltd|Bros|vs|co|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\."
)


def _is_pictograph(char: str) -> bool:
    return char != "°" and unicodedata.category(char) == "So"


def _period_splits(chunk: str) -> bool:
    """Whether a chunk's final period is a token of its own (spaCy's suffix rule): it is after
    a lower-case or uncased letter, a digit or punctuation, or after two capitals ("USA."),
    but not after a lone capital ("J.", "U.S.")."""
    before = chunk[-2:-1]
    if not before or _ABBREVIATION.fullmatch(chunk):
        return False
    if before.isupper():
        return chunk[-3:-2].isupper()
    return before.isdigit() or before.isalpha() or before in "%²-+" or before in _EDGE_CHARS


def _prefix_length(chunk: str) -> int:
    first = chunk[0]
    if first == ".":
        return len(chunk) - len(chunk.lstrip(".")) if chunk.startswith("..") else 0
    if first in _PREFIX_CHARS or _is_pictograph(first) or unicodedata.category(first) == "Sc":
        return 1
    return 1 if first == "+" and not chunk[1:2].isdigit() else 0


def _suffix_length(chunk: str) -> int:
    last = chunk[-1]
    if last == ".":
        if chunk.endswith(".."):
            return len(chunk) - len(chunk.rstrip("."))
        return 1 if _period_splits(chunk) else 0
    if chunk.endswith(_CONTRACTIONS):
        return next(len(c) for c in _CONTRACTIONS if chunk.endswith(c)) % len(chunk)  # never the whole chunk
    if last in _SUFFIX_CHARS or _is_pictograph(last):
        return 1
    if (last in "+%" or unicodedata.category(last) == "Sc") and chunk[-2:-1].isdigit():
        return 1
    return 0


def split_words(text: str) -> list[str]:
    """Words and punctuation tokens of a text, whitespace dropped."""
    words: list[str] = []
    for chunk in text.split():
        if chunk.isalnum() or len(chunk) == 1:
            words.append(chunk)
            continue
        core, last = chunk[:-1], chunk[-1]
        if not core.isalnum():
            _split_chunk(chunk, words)
        elif last in _EDGE_CHARS or (last == "." and _period_splits(chunk)):
            words += (core, last)
        elif last == ".":
            words.append(chunk)
        else:
            _split_chunk(chunk, words)
    return words


def _split_chunk(chunk: str, out: list[str]) -> None:
    """One whitespace chunk the fast paths could not take: peel prefixes and suffixes (until
    what is left is an abbreviation), then split the core at infixes unless it is a URL."""
    suffixes: list[str] = []
    while chunk and not _ABBREVIATION.fullmatch(chunk):
        size = len(chunk)
        if cut := _prefix_length(chunk):
            piece = chunk[:cut]
            if piece != "+":  # a run of one prefix character ("((", "=====") peels at once, not char by char
                cut = len(chunk) - len(chunk.lstrip(piece)) if cut == 1 else cut
            out.extend([piece] * (cut // len(piece)))
            chunk = chunk[cut:]
        if chunk and not _ABBREVIATION.fullmatch(chunk) and (cut := _suffix_length(chunk)):
            piece = chunk[-cut:]
            if piece in _SUFFIX_CHARS:
                cut = len(chunk) - len(chunk.rstrip(piece))
            suffixes.extend([piece] * (cut // len(piece)))
            chunk = chunk[:-cut]
        if len(chunk) == size:
            break
    if chunk:
        if not _INFIX_HINT(chunk) or _ABBREVIATION.fullmatch(chunk) or _URL.fullmatch(chunk):
            out.append(chunk)
        else:
            parts = _INFIX.split(chunk)  # [piece, infix, piece, infix, ..., piece]
            if not parts[0]:  # a leading infix stays on the piece after it, as in spaCy
                parts[1:3] = [parts[1] + parts[2]]
            out.extend(filter(None, parts))
    out.extend(reversed(suffixes))


_ALL_PUNCT = re.compile(f"[{_bmp_class('P')}]+").fullmatch  # spaCy's is_punct: all characters punctuation


def count_sentences(words: list[str], stop_at: int | None = None) -> int:
    """Sentences in a token list, by spaCy's sentencizer rule (which datatrove's C4 uses).

    A sentence ends after a sentence-terminal token ("." "!" "?" ...) once a token follows
    that is not punctuation; abbreviations ("Mr.", "U.S.") are single tokens, so they do
    not end one. Stops counting at `stop_at`: C4 only asks whether there are enough.
    """
    if not words:
        return 0
    sentences, after_terminal = 1, False
    for word in words:
        if word in SENTENCE_TERMINALS:
            after_terminal = True
        elif after_terminal and not _ALL_PUNCT(word):
            sentences += 1
            if stop_at is not None and sentences >= stop_at:
                break
            after_terminal = False
    return sentences


# --------------------------------------------------------------------------- the document


class DocView:
    """One document's text and what several rules derive from it, each computed once."""

    __slots__ = ("_counts", "_words", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None
        self._counts: Counter[str] | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = split_words(self.text)
        return self._words

    @property
    def word_counts(self) -> Counter[str]:
        if self._counts is None:
            self._counts = Counter(self.words)
        return self._counts

    def replace_text(self, text: str) -> None:
        """A rule edited the text: what was derived from the old one is stale."""
        if text != self.text:
            self.text, self._words, self._counts = text, None, None


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _above(name: str, value: float, limit: float | None) -> str | None:
    return f"{name}={_fmt(value)}>{_fmt(limit)}" if limit is not None and value > limit else None


def _below(name: str, value: float, limit: float | None) -> str | None:
    return f"{name}={_fmt(value)}<{_fmt(limit)}" if limit is not None and value < limit else None


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- Gopher repetition


class GopherRepetitionSettings(_Settings):
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


def _duplicates(parts: list[str]) -> tuple[int, int]:
    """(parts equal to an earlier part, their characters), without a Python loop."""
    unique = set(parts)
    return len(parts) - len(unique), sum(map(len, parts)) - sum(map(len, unique))


class _NGramKeys:
    """64-bit keys for a document's word n-grams: `keys[n][i]` stands for `words[i:i+n]`.

    Equal n-grams get equal keys; two different ones share a key with probability ~2^-62,
    far below one in any corpus. Counting keys with numpy replaces building and hashing a
    tuple (or, in datatrove, a joined string) per position and n.
    """

    _MIX = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, words: list[str]) -> None:
        self._keys = [np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)]

    def __getitem__(self, n: int) -> np.ndarray:
        while len(self._keys) < n:  # keys of n-grams from those of (n-1)-grams, one more word mixed in
            self._keys.append(self._keys[-1][:-1] * self._MIX + self._keys[0][len(self._keys) :])
        return self._keys[n - 1]


class GopherRepetition:
    """Drops documents made of repeated lines, paragraphs or n-grams (boilerplate, spam).

    Fractions of characters are taken over the whole text, as in datatrove. N-grams are
    counted as 64-bit keys with numpy; the duplicate n-gram scan (sequential by definition)
    only visits positions whose shortest checked n-gram occurs twice: a longer n-gram can
    only repeat where its prefix does, and most positions hold a unique one.
    """

    name: ClassVar[str] = "gopher_repetition"

    def __init__(self, settings: GopherRepetitionSettings | None = None) -> None:
        self.settings = settings or GopherRepetitionSettings()
        self._top = sorted(self.settings.top_n_grams.items())
        self._dup = sorted(self.settings.dup_n_grams.items())

    def __call__(self, doc: DocView) -> Failure | None:
        detail = self._check(doc)
        return (self.name, detail) if detail else None

    def _check(self, doc: DocView) -> str | None:
        s, text = self.settings, doc.text
        if not text:
            return "empty"
        chars = len(text)
        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        dups, dup_chars = _duplicates(paragraphs)
        detail = _above("dup_para_frac", dups / len(paragraphs), s.dup_para_frac) or _above(
            "dup_para_char_frac", dup_chars / chars, s.dup_para_char_frac
        )
        if detail:
            return detail
        lines = [line for line in text.split("\n") if line]  # = re.split("\n+", text), 10x faster:
        if text.startswith("\n"):  # a leading or trailing newline leaves an empty line there
            lines.insert(0, "")
        if text.endswith("\n"):
            lines.append("")
        dups, dup_chars = _duplicates(lines)
        detail = _above("dup_line_frac", dups / len(lines), s.dup_line_frac) or _above(
            "dup_line_char_frac", dup_chars / chars, s.dup_line_char_frac
        )
        if detail:
            return detail
        words = doc.words
        if not words:
            return None
        keys = _NGramKeys(words)
        offsets = np.zeros(len(words) + 1, dtype=np.int64)  # offsets[i]: characters in words[:i]
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=offsets[1:])
        for n, limit in self._top:
            if len(words) < n:
                continue
            top, start = _top_count(keys[n])
            gram_chars = int(offsets[start + n] - offsets[start]) + n - 1  # joined by spaces
            if detail := _above(f"top_{n}_gram_char_frac", gram_chars * top / chars, limit):
                return detail
        if not self._dup or len(words) < self._dup[0][0]:
            return None
        shortest = keys[self._dup[0][0]]
        ordered = np.sort(shortest)
        repeated_keys = ordered[1:][ordered[1:] == ordered[:-1]]
        repeated_at = np.flatnonzero(np.isin(shortest, repeated_keys))
        for n, limit in self._dup:
            within = repeated_at[repeated_at <= len(words) - n]
            repeated = _repeated_ngram_chars(n, within.tolist(), keys[n][within].tolist(), offsets)
            if detail := _above(f"dup_{n}_gram_char_frac", repeated / chars, limit):
                return detail
        return None


def _top_count(keys: np.ndarray) -> tuple[int, int]:
    """(the highest count of any key, the first position holding a key with that count): the
    n-gram datatrove's Counter.most_common(1) picks, without a stable argsort."""
    ordered = np.sort(keys)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(starts, append=len(ordered))
    top = int(counts.max())
    if top == 1:
        return 1, 0
    return top, int(np.argmax(np.isin(keys, ordered[starts[counts == top]])))


def _repeated_ngram_chars(n: int, positions: list[int], keys: list[int], offsets: np.ndarray) -> int:
    """Characters in n-grams that repeat an earlier one, scanning left to right and jumping
    past each repeat (Gopher's definition, as datatrove counts it). Only `positions` (with
    their n-gram keys) can hit or be jumped over: every other position holds an n-gram
    that occurs once in the document."""
    seen: set[int] = set()
    repeated, free_from = 0, 0
    for i, key in zip(positions, keys, strict=True):
        if i < free_from:
            continue
        if key in seen:
            repeated += int(offsets[i + n] - offsets[i])
            free_from = i + n
        else:
            seen.add(key)
    return repeated


# --------------------------------------------------------------------------- Gopher quality

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQualitySettings(_Settings):
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
    stop_words: list[str] = Field(default_factory=lambda: list(GOPHER_STOP_WORDS))


class GopherQuality:
    """Drops documents that do not read like prose: too short or long, odd word lengths,
    hashtag or ellipsis spam, all bullets, mostly non-words, no English stop words.

    Words made only of symbols do not count as words for the length checks; every token
    counts for the ratios, as in datatrove. Per-word tests run once per distinct word.
    """

    name: ClassVar[str] = "gopher_quality"

    def __init__(self, settings: GopherQualitySettings | None = None) -> None:
        self.settings = settings or GopherQualitySettings()
        self._stop_words = frozenset(self.settings.stop_words)

    def __call__(self, doc: DocView) -> Failure | None:
        detail = self._check(doc)
        return (self.name, detail) if detail else None

    def _check(self, doc: DocView) -> str | None:
        s, text = self.settings, doc.text
        n_words = len(doc.words)
        counted = counted_chars = alpha = 0
        for word, count in doc.word_counts.items():
            if word.strip(GOPHER_SYMBOLS):
                counted += count
                counted_chars += count * len(word)
            if any(map(str.isalpha, word)):
                alpha += count
        detail = _below("words", counted, s.min_doc_words) or _above("words", counted, s.max_doc_words)
        if detail:
            return detail
        if counted == 0:  # no words at all, or only symbols, with min_doc_words off
            return "no_words"
        mean_length = counted_chars / counted
        detail = (
            _below("mean_word_length", mean_length, s.min_avg_word_length)
            or _above("mean_word_length", mean_length, s.max_avg_word_length)
            or _above("hash_word_ratio", text.count("#") / n_words, s.max_symbol_word_ratio)
            or _above("ellipsis_word_ratio", (text.count("...") + text.count("…")) / n_words, s.max_symbol_word_ratio)
        )
        if detail:
            return detail
        if s.max_bullet_lines_ratio is not None or s.max_ellipsis_lines_ratio is not None:
            lines = text.splitlines()
            bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
            ellipses = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
            detail = _above("bullet_lines_ratio", bullets / len(lines), s.max_bullet_lines_ratio) or _above(
                "ellipsis_lines_ratio", ellipses / len(lines), s.max_ellipsis_lines_ratio
            )
            if detail:
                return detail
        detail = _below("alpha_words_ratio", alpha / n_words, s.min_alpha_words_ratio)
        if detail:
            return detail
        if s.min_stop_words is not None:
            return _below("stop_words", len(self._stop_words & doc.word_counts.keys()), s.min_stop_words)
        return None


# --------------------------------------------------------------------------- C4


class C4Settings(_Settings):
    """C4's line filters (datatrove's C4QualityFilter defaults, line mode); None turns one off."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_LINE_ENDS = (".", "?", "!", '"', "'")
_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4Lines:
    """Keeps only lines that look like sentences, then drops documents left with too few.

    Removes lines without terminal punctuation, with fewer than 3 words, with a 1000+
    character word, mentioning javascript or cookie/terms boilerplate (and Wikipedia-style
    citation marks); drops the document outright on "lorem ipsum" or a curly bracket in a
    kept line. This rule edits the text. Sentences are counted only until there are enough.
    """

    name: ClassVar[str] = "c4"

    def __init__(self, settings: C4Settings | None = None) -> None:
        self.settings = settings or C4Settings()

    def __call__(self, doc: DocView) -> Failure | None:
        s = self.settings
        kept: list[str] = []
        needed = s.min_num_sentences or 0
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            words = line.split()
            if (
                s.max_word_length is not None
                and len(line) > s.max_word_length
                and any(len(word) > s.max_word_length for word in words)
            ):
                continue
            if s.remove_citations:
                line = _CITATION.sub("", line)
            if s.filter_no_terminal_punct and (not line.endswith(_C4_LINE_ENDS) or line.endswith("...")):
                continue
            if s.min_words_per_line is not None and len(words) < s.min_words_per_line:
                continue
            lower = line.lower()
            if s.filter_lorem_ipsum and "lorem ipsum" in lower:
                return self.name, "lorem_ipsum"
            if s.filter_javascript and "javascript" in lower:
                continue
            if s.filter_curly_bracket and "{" in line:
                return self.name, "curly_bracket"
            if s.filter_policy and any(phrase in lower for phrase in _POLICY_PHRASES):
                continue
            if sentences < needed:
                sentences += count_sentences(split_words(line), stop_at=needed - sentences)
            kept.append(line)
        if sentences < needed:
            return self.name, f"sentences={sentences}<{needed}"
        doc.replace_text("\n".join(kept).strip())
        return None


# --------------------------------------------------------------------------- FineWeb


class FineWebSettings(_Settings):
    """FineWeb's own rules (datatrove's FineWebQualityFilter defaults)."""

    line_punct_thr: float = 0.12
    line_punct_exclude_zero: bool = False
    stop_chars: str | None = Field(default=None, description="line-final characters; default: sentence terminals")
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3


class FineWebQuality:
    """Drops documents whose lines mostly lack end punctuation, are mostly short, repeat
    each other, or that are lists (many newlines per word)."""

    name: ClassVar[str] = "fineweb"

    def __init__(self, settings: FineWebSettings | None = None) -> None:
        self.settings = settings or FineWebSettings()
        stop = self.settings.stop_chars
        self._stop_chars = frozenset(stop) if stop is not None else SENTENCE_TERMINALS

    def __call__(self, doc: DocView) -> Failure | None:
        detail = self._check(doc)
        return (self.name, detail) if detail else None

    def _check(self, doc: DocView) -> str | None:
        s, text = self.settings, doc.text
        lines = [line for line in text.split("\n") if not line.isspace() and line]
        if not lines:
            return "empty"
        ratio = sum(1 for line in lines if line[-1] in self._stop_chars) / len(lines)
        if ratio < s.line_punct_thr and not (ratio == 0 and s.line_punct_exclude_zero):
            return f"line_punct_ratio={_fmt(ratio)}<{_fmt(s.line_punct_thr)}"
        short = sum(1 for line in lines if len(line) <= s.short_line_length) / len(lines)
        detail = _above("short_line_ratio", short, s.short_line_thr) or _above(
            "char_dup_ratio", _duplicates(lines)[1] / (len(text) - text.count("\n")), s.char_duplicates_ratio
        )
        if detail:
            return detail
        n_words = len(doc.words)
        if n_words == 0:
            return "no_words"
        return _above("list_ratio", text.count("\n") / n_words, s.new_line_ratio)


# --------------------------------------------------------------------------- all together

Rule = Callable[[DocView], Failure | None]
RuleName = Literal["gopher_repetition", "gopher_quality", "c4", "fineweb"]
RULES: dict[str, Callable[[HeuristicSettings], Rule]] = {
    "gopher_repetition": lambda s: GopherRepetition(s.gopher_repetition),
    "gopher_quality": lambda s: GopherQuality(s.gopher_quality),
    "c4": lambda s: C4Lines(s.c4),
    "fineweb": lambda s: FineWebQuality(s.fineweb),
}


class HeuristicSettings(_Settings):
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


# True at the code points of whitespace and Gopher symbols: counts a text's word characters
# with numpy (a regex or str.translate takes ~1 s per 10 MB, this ~0.1 s)
_NOT_WORD_CHAR = np.zeros(0x110000, dtype=bool)
_NOT_WORD_CHAR[[ord(c) for c in GOPHER_SYMBOLS]] = True
_NOT_WORD_CHAR[[p for p in range(0x3001) if chr(p).isspace()]] = True  # U+3000 is the last space


def _word_chars(text: str) -> int:
    """Characters that are neither whitespace nor Gopher symbols: each lies in a counted word."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return int(codes.size - np.count_nonzero(_NOT_WORD_CHAR[codes]))


class HeuristicFilter:
    """The enabled rules, in order, on one document at a time; the first failure drops it."""

    def __init__(self, settings: HeuristicSettings | None = None) -> None:
        self.settings = settings or HeuristicSettings()
        self.rules: list[Rule] = [RULES[name](self.settings) for name in self.settings.enabled]
        self._gopher_quality = "gopher_quality" in self.settings.enabled

    def apply(self, text: str) -> tuple[str, str | None, str]:
        """(text, possibly edited by C4; the failing rule or None; what it measured)."""
        if oversized := self._oversized(text):
            return text, GopherQuality.name, oversized
        doc = DocView(text)
        for rule in self.rules:
            if failure := rule(doc):
                return doc.text, failure[0], failure[1]
        return doc.text, None, ""

    def _oversized(self, text: str) -> str | None:
        """A cheap early drop for long documents Gopher's word bounds would drop anyway.

        A 10 MB page costs seconds to tokenize and count n-grams over, but three bounds need
        no tokens. Every whitespace chunk holding a word character (neither space nor symbol)
        yields at least one counted word, and every word character lies in a counted word.
        So more such chunks than `max_doc_words`, or more word characters than
        `max_doc_words * max_avg_word_length`, fail the word limit or the mean-length limit;
        fewer word characters than `min_doc_words` fail the minimum. Only the reported
        check can differ from a full run (an earlier rule might have fired first, or the
        other Gopher bound); the decision cannot.
        """
        q = self.settings.gopher_quality
        if not self._gopher_quality or q.max_doc_words is None or len(text) <= q.max_doc_words:
            return None
        word_chars = _word_chars(text)
        if q.max_avg_word_length is not None and word_chars > q.max_doc_words * q.max_avg_word_length:
            return f"word_chars={word_chars}>{_fmt(q.max_doc_words * q.max_avg_word_length)}"
        if q.min_doc_words is not None and word_chars < q.min_doc_words:
            return f"words<={word_chars}<{q.min_doc_words}"
        chunks = text.split()
        if len(chunks) > q.max_doc_words:
            words = sum(1 for chunk in chunks if chunk.strip(GOPHER_SYMBOLS))
            if words > q.max_doc_words:
                return f"words>={words}>{q.max_doc_words}"
        return None
