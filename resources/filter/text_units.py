"""Text units the filters measure: words (a fast spaCy-compatible tokenizer), sentences, repeated
lines, word n-gram keys, and one document's words computed once for every rule that needs them.

A fast approximation of the spaCy tokenizer datatrove counts words with (spaCy's shared
punctuation rules, without its per-language exception tables), so that word-based ratios
agree: whitespace chunks; punctuation, quotes, brackets, currency and pictographs split off
their edges one by one; "'s"/"n't"/"'re"-style endings split; a final period split unless it
ends an abbreviation ("U.S.", "e.g.", "Mr.", "J."); hyphens, slashes, colons and commas split
between letters ("state-of-the-art", "and/or"), not inside numbers ("1,000", "10:30",
"COVID-19"); URLs kept whole. Most chunks are plain alphanumerics, or one followed by a
comma or period, and take a fast path; edges are peeled in Python (a regex anchored at a
chunk's end rescans it), only infixes use a regex.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import cached_property

import numpy as np
import regex

# Sentence terminals per Unicode (".", "!", "?", "。", "؟", "।", ...): the end-of-line marks of
# FineWeb's punctuation rule and the sentence boundaries of C4's sentence count. (datatrove's
# and spaCy's lists are this property from an older Unicode, plus three Khmer signs.)
SENTENCE_TERMINALS = frozenset(regex.findall(r"\p{Sentence_Terminal}", "".join(map(chr, range(0x20000)))))


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
_EDGE = "".join(map(re.escape, _PUNCT + _QUOTES))
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


class DocView:
    """One document's text and what several rules derive from it, each computed once."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return split_words(self.text)

    @cached_property
    def word_counts(self) -> Counter[str]:
        return Counter(self.words)

    def replace_text(self, text: str) -> None:
        """A rule edited the text: what was derived from the old one is stale."""
        if text != self.text:
            self.text = text
            self.__dict__.pop("words", None)
            self.__dict__.pop("word_counts", None)


def duplicates(parts: list[str]) -> tuple[int, int]:
    """(parts equal to an earlier part, their characters), without a Python loop."""
    unique = set(parts)
    return len(parts) - len(unique), sum(map(len, parts)) - sum(map(len, unique))


class NGramKeys:
    """64-bit keys for a document's word n-grams: `keys[n][i]` stands for words i..i+n-1, a
    polynomial of their uint64 keys mod 2^64 (the multiplier is odd, so no word is ignored).

    Equal n-grams get equal keys; two different ones share a key with probability ~2^-62, far
    below one in any corpus. Each size is built from the one below and kept, so all sizes up to
    n cost n vector operations, instead of a tuple (or a joined string) hashed per position and n.
    """

    _MIX = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, word_keys: np.ndarray) -> None:
        self._keys = [word_keys]

    def __getitem__(self, n: int) -> np.ndarray:
        while len(self._keys) < n:
            self._keys.append(self._keys[-1][:-1] * self._MIX + self._keys[0][len(self._keys) :])
        return self._keys[n - 1]
