"""N-gram decontamination of training documents against registered evaluation sets.

As in GPT-3 and TÜLU 3: text is reduced to words (NFKC, casefolded, every run of non-word
characters a separator, so punctuation, case and WikiText's tokenization - "state @-@ of",
"0 @.@ 7", "word ," - do not hide a copy), and a document is contaminated when it shares
`min_matches` distinct word n-grams (default 13) with one evaluation set.

Sequences shorter than `ngram` words cannot share an n-gram, so they are matched whole:
- a training document of `min_words` <= L < `ngram` words is contaminated when its whole word
  sequence occurs inside an evaluation document;
- an evaluation document of `min_words` <= L < `ngram` words (a short benchmark item)
  contaminates any training document that contains its whole word sequence.
A whole-sequence match is contamination by itself, whatever `min_matches` says. Below
`min_words` (default 8) a sequence is too common to be evidence and is never matched.

The index holds 64-bit hashes only (xxh3-64 per word, n-grams as in `NGramKeys`), each distinct
hash with a bitmask of the evaluation sets holding it: about 9 x (ngram - min_words + 1) bytes
per evaluation word, for the n-grams and the shorter windows together (9 MB for WikiText-2
valid). `min_words = ngram` turns whole-sequence matching off and keeps only the n-gram table.

Removal key: `decontamination_ngram_overlap`, with detail "<eval set>:<matches>".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.filter.text_sources import TextSourceError, read_documents
from resources.filter.text_units import NGramKeys

MAX_EVAL_SETS = 64  # one bit each in a uint64 mask
OVERLAP = "decontamination_ngram_overlap"


class DecontaminationSettings(BaseModel):
    """The evaluation sets to protect and what counts as a copy of them."""

    model_config = ConfigDict(extra="forbid")

    eval_sets: dict[str, str] = Field(min_length=1, description="name -> text or jsonl file (path or fsspec URL)")
    ngram: int = Field(default=13, ge=1, description="words per n-gram")
    min_matches: int = Field(default=1, ge=1, description="distinct shared n-grams that make a document contaminated")
    min_words: int = Field(default=8, ge=1, description="shortest sequence matched whole (see module doc)")

    @model_validator(mode="after")
    def _consistent(self) -> DecontaminationSettings:
        if self.min_words > self.ngram:
            raise ValueError(f"min_words ({self.min_words}) cannot exceed ngram ({self.ngram})")
        if len(self.eval_sets) > MAX_EVAL_SETS:
            raise ValueError(f"at most {MAX_EVAL_SETS} eval sets, got {len(self.eval_sets)}")
        if any(not name.strip() for name in self.eval_sets):
            raise ValueError("eval set names cannot be blank")
        return self

    def eval_set_files(self) -> list[str]:
        """The eval sets' paths, refusing a missing local one: the sets are read only when the stage
        runs, and a typo should not cost a run."""
        for name, path in self.eval_sets.items():
            if "://" not in path and not Path(path).is_file():
                raise TextSourceError(f"eval set {name!r} not found: {path}")
        return list(self.eval_sets.values())


class Contamination(NamedTuple):
    """The evaluation set a document overlaps most, and how many distinct n-grams (plus whole
    short sequences) it shares with it."""

    eval_set: str
    matches: int


@dataclass
class EvalSetStats:
    path: str
    documents: int = 0
    words: int = 0
    ngrams: int = 0  # n-gram positions indexed
    short_documents: int = 0  # min_words <= words < ngram: matched whole
    ignored_documents: int = 0  # fewer than min_words words


_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """The words n-grams are made of: NFKC-normalized, casefolded runs of word characters."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _word_hashes(words: list[str]) -> np.ndarray:
    encoded = "\0".join(words).encode().split(b"\0")  # one encode call; \w never matches NUL
    return np.fromiter(map(xxhash.xxh3_64_intdigest, encoded), dtype=np.uint64, count=len(words))


class _HashTable:
    """Sorted distinct hashes, each with the bitmask of the evaluation sets holding it."""

    def __init__(self, parts: list[tuple[np.ndarray, int]], mask_type: type[np.unsignedinteger]) -> None:
        chunks, owners = zip(*parts, strict=True)
        hashes = np.concatenate(chunks)
        bits = np.left_shift(1, np.array(owners, dtype=np.uint64)).astype(mask_type)
        masks = np.repeat(bits, [len(c) for c in chunks])
        order = np.argsort(hashes, kind="stable")
        hashes, masks = hashes[order], masks[order]
        starts = np.flatnonzero(np.concatenate(([True], hashes[1:] != hashes[:-1])))
        self.hashes = hashes[starts]
        self.masks = np.bitwise_or.reduceat(masks, starts)

    @property
    def nbytes(self) -> int:
        return self.hashes.nbytes + self.masks.nbytes

    def masks_of(self, queries: np.ndarray) -> np.ndarray:
        """The masks of the distinct queries that are in the table."""
        slots = np.searchsorted(self.hashes, queries)
        slots[slots == len(self.hashes)] = 0
        return self.masks[np.unique(slots[self.hashes[slots] == queries])]


class Decontaminator:
    """Reads every evaluation set once, builds the hash index, then checks documents."""

    def __init__(self, settings: DecontaminationSettings) -> None:
        self.settings = settings
        self.names = list(settings.eval_sets)
        self.stats: dict[str, EvalSetStats] = {}
        n, min_words = settings.ngram, settings.min_words
        # (hashes of every run of k words, the eval set holding them) for k in min_words..n
        windows: dict[int, list[tuple[np.ndarray, int]]] = {k: [] for k in range(min_words, n + 1)}
        short_items: dict[int, list[tuple[np.ndarray, int]]] = {}  # the same, for whole short documents
        for owner, (name, path) in enumerate(settings.eval_sets.items()):
            stats = self.stats[name] = EvalSetStats(path)
            for document in read_documents(path, what=f"eval set {name!r}"):
                hashes = _word_hashes(words_of(document))
                stats.documents += 1
                stats.words += len(hashes)
                if len(hashes) < min_words:
                    stats.ignored_documents += 1
                    continue
                keys = NGramKeys(hashes)
                for size in range(min_words, min(len(hashes), n) + 1):
                    windows[size].append((keys[size], owner))
                if len(hashes) < n:
                    stats.short_documents += 1
                    short_items.setdefault(len(hashes), []).append((keys[len(hashes)], owner))
                else:
                    stats.ngrams += len(hashes) - n + 1
            if stats.ngrams + stats.short_documents == 0:
                raise TextSourceError(f"eval set {name!r} has no document of at least {min_words} words: {path}")
        mask_type = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= len(self.names))
        self._windows = {k: _HashTable(parts, mask_type) for k, parts in windows.items() if parts}
        self._ngrams = self._windows.pop(n, None)
        self._short_items = {k: _HashTable(parts, mask_type) for k, parts in sorted(short_items.items())}

    @property
    def index_bytes(self) -> int:
        tables = [self._ngrams, *self._windows.values(), *self._short_items.values()]
        return sum(t.nbytes for t in tables if t is not None)

    def check(self, text: str) -> Contamination | None:
        """The evaluation set `text` is contaminated with (the one it shares most with, the first
        registered on a tie), or None when it is clean."""
        hashes = _word_hashes(words_of(text))
        keys = NGramKeys(hashes)
        shared = np.zeros(len(self.names), dtype=np.int64)  # distinct n-grams in common
        whole = np.zeros(len(self.names), dtype=np.int64)  # whole short sequences in common
        if len(hashes) >= self.settings.ngram:
            for size, table in self._short_items.items():
                whole += self._per_set(table.masks_of(keys[size]))
            if self._ngrams is not None:
                shared += self._per_set(self._ngrams.masks_of(keys[self.settings.ngram]))
        elif len(hashes) in self._windows:
            whole += self._per_set(self._windows[len(hashes)].masks_of(keys[len(hashes)]))
        contaminated = (whole > 0) | (shared >= self.settings.min_matches)
        if not contaminated.any():
            return None
        total = np.where(contaminated, shared + whole, -1)
        best = int(np.argmax(total))
        return Contamination(self.names[best], int(total[best]))

    def check_batch(self, texts: Iterable[str]) -> list[Contamination | None]:
        return [self.check(text) for text in texts]

    def _per_set(self, masks: np.ndarray) -> np.ndarray:
        """How many of the matched hashes each evaluation set holds."""
        return np.array([np.count_nonzero(masks & (1 << bit)) for bit in range(len(self.names))], dtype=np.int64)
