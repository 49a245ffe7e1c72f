"""MinHash sketches of documents: normalized words, word n-gram shingles, signatures, LSH band keys.

Why vectorized: per-document Python (split, join each n-gram, hash each string) costs more
than the MinHash itself; here a batch of documents is one polars pass over its text
(lowercase, everything but letters, digits and marks becomes a space) and a handful of
numpy passes over the batch's UTF-8 bytes and words, and the permutations run in rensa's
Rust kernel (they cost less than the tokenizing).

Why our own shingle hash: index segments are persisted and compared with partitions
deduplicated months later, so the hash of a shingle must not change with a library
release (polars documents that its `hash` may). Ours is plain integer arithmetic on
little-endian 64-bit chunks of each word (murmur3's 64-bit finalizer; xxh3, a specified
format, for the rare word over 32 bytes) and Horner over the n words, identical on every
platform numpy runs on. `SKETCH_VERSION` and rensa's own `ALGORITHM_VERSION` go into
`SketchSpec.sketch_id`, so a change to either makes old segments fail loudly instead of
silently never matching.

Nothing here imports Dagster, so spawned signature workers start fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import rensa
import xxhash

SKETCH_VERSION = 1

# Everything that is not a letter, a digit or a combining mark separates words. Marks stay
# inside words: scripts such as Devanagari write vowels with them. Plain spaces are left alone
# (runs of them are handled in shingle_hashes): excluding them halves the regex's matches.
_SEPARATORS = r"[^\p{L}\p{N}\p{M} ]+"
_SPACE = 32
_CHUNKS = 4  # words of up to 32 bytes are hashed vectorized
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)  # the low n bytes of a chunk
_WORD_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd golden-ratio constant for combining word hashes
_FMIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)


@dataclass(frozen=True, slots=True)
class SketchSpec:
    """What decides a document's signature; two partitions are only comparable under the same spec."""

    ngram: int
    bands: int
    rows: int
    seed: int

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def sketch_id(self) -> str:
        """Names the signature scheme in persisted segments, so mismatches are caught, not ignored."""
        algorithm = rensa.RMinHash.ALGORITHM_VERSION
        return f"minhash-v{SKETCH_VERSION}/rensa-a{algorithm}/{self.ngram}gram/{self.bands}x{self.rows}/seed{self.seed}"


@dataclass(frozen=True, slots=True)
class Sketches:
    """Signatures of a batch of documents, row-aligned with the batch.

    `has_shingles` is False for documents with no word at all (empty, whitespace or punctuation
    only): their signature is meaningless, so they never take part in near-duplicate matching
    (exact matching by doc_id still covers them)."""

    signatures: np.ndarray  # (documents, num_perm) uint32
    band_keys: np.ndarray  # (documents, bands) uint64
    has_shingles: np.ndarray  # (documents,) bool

    @staticmethod
    def concat(parts: list[Sketches], spec: SketchSpec) -> Sketches:
        if not parts:
            return Sketches(
                np.empty((0, spec.num_perm), np.uint32), np.empty((0, spec.bands), np.uint64), np.empty(0, bool)
            )
        return Sketches(
            np.concatenate([p.signatures for p in parts]),
            np.concatenate([p.band_keys for p in parts]),
            np.concatenate([p.has_shingles for p in parts]),
        )


def normalize(texts: pl.Series) -> pl.Series:
    """Lowercase words separated by spaces: what a copy with other punctuation, case or spacing
    still shares with its original. Nulls become empty documents."""
    return texts.fill_null("").str.to_lowercase().str.replace_all(_SEPARATORS, " ")


def shingle_hashes(normalized: pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every document, flat, with row offsets.

    A document with fewer than `ngram` words (but at least one) is a single shingle of all its
    words, so short documents are still compared; one with no words has no shingle."""
    data, offsets = _utf8_buffers(normalized)
    # A word is a run of non-spaces; documents are concatenated without a separator, so their
    # boundaries cut words too.
    cut = np.zeros(len(data) + 1, bool)
    cut[offsets] = True
    before, after = np.ones(len(data), bool), np.ones(len(data), bool)
    before[1:], after[:-1] = data[:-1] == _SPACE, data[1:] == _SPACE
    letter = data != _SPACE
    word_starts = np.flatnonzero(letter & (before | cut[:-1]))
    word_lengths = np.flatnonzero(letter & (after | cut[1:])) + 1 - word_starts
    words = _word_hashes(data, word_starts, word_lengths)

    first_word = np.searchsorted(word_starts, offsets)  # per document, plus the end
    word_count = np.diff(first_word)
    per_doc = np.where(word_count >= ngram, word_count - ngram + 1, (word_count > 0).astype(np.int64))
    row_offsets = np.zeros(len(per_doc) + 1, np.int64)
    np.cumsum(per_doc, out=row_offsets[1:])
    # Every window of `ngram` consecutive words, from contiguous slices (no gathers); windows
    # that cross into the next document are computed and then left out.
    windows = np.zeros(max(len(words) - ngram + 1, 0), np.uint64)
    for k in range(ngram):
        windows = windows * _WORD_BASE + words[k : k + len(windows)]
    full = word_count >= ngram
    counts = per_doc[full]
    skip = np.repeat(first_word[:-1][full] - (np.cumsum(counts) - counts), counts)  # window index - shingle index
    hashes = np.empty(int(row_offsets[-1]), np.uint64)
    hashes[np.repeat(full, per_doc)] = windows[skip + np.arange(len(skip))]
    short = np.flatnonzero((word_count > 0) & ~full)  # one shingle of all its words
    combined = np.zeros(len(short), np.uint64)
    for k in range(ngram - 1):
        present = k < word_count[short]
        combined[present] = combined[present] * _WORD_BASE + words[first_word[short][present] + k]
    hashes[row_offsets[short]] = combined
    return _fmix64(hashes), row_offsets


def sketch(texts: pl.Series, spec: SketchSpec) -> Sketches:
    """Signatures and band keys of a batch of raw texts (module-level so worker processes can run it)."""
    hashes, row_offsets = shingle_hashes(normalize(texts), spec.ngram)
    has_shingles = np.diff(row_offsets) > 0
    if len(has_shingles):
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            hashes, row_offsets.astype(np.uint64), spec.num_perm, spec.seed
        )
        signatures = np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(has_shingles), spec.num_perm)
    else:
        signatures = np.empty((0, spec.num_perm), np.uint32)
    return Sketches(signatures, band_keys(signatures, spec.bands, spec.rows), has_shingles)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band: two documents share a key (an LSH bucket) when all `rows`
    signature values of that band agree (up to 64-bit collisions). The band's index is hashed in,
    so keys of different bands never meet in one bucket."""
    blocks = signatures.reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.tile(np.arange(bands, dtype=np.uint64), (len(signatures), 1))
    for r in range(rows):
        keys = keys * _WORD_BASE + blocks[:, :, r]
    return _fmix64(keys)


def similarity(left: np.ndarray, right: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Estimated Jaccard similarity of row pairs: the fraction of equal signature values.
    Chunked so a burst of candidate pairs cannot allocate pairs x num_perm at once."""
    out = np.empty(len(left), np.float64)
    for start in range(0, len(left), chunk):
        stop = start + chunk
        out[start:stop] = (left[start:stop] == right[start:stop]).mean(axis=1)
    return out


def _utf8_buffers(strings: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated UTF-8 bytes of a string Series and its offsets, without copying."""
    array = strings.to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    _, offset_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offset_buffer, np.int64, len(array) + 1, array.offset * 8)
    base, end = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(data_buffer, np.uint8, end - base, base) if end > base else np.zeros(0, np.uint8)
    return data, offsets - base


def _word_hashes(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each word's bytes, so a word hashes the same wherever it occurs.

    Words of up to 32 bytes (nearly all) are read as up to four little-endian 64-bit chunks
    straight from the batch's bytes (unaligned loads through a 1-byte-stride view), each chunk
    folded in with murmur3's finalizer: a few vector operations per word, none per byte.
    Longer words (a CJK sentence without spaces, a 10 MB run of letters) are few; xxh3 hashes
    them one by one."""
    padded = np.zeros(len(data) + 8, np.uint8)
    padded[: len(data)] = data
    chunks = np.ndarray((len(data) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    hashes = _fmix64((chunks[starts] & _MASKS[np.minimum(lengths, 8)]) ^ lengths.astype(np.uint64) * _WORD_BASE)
    for k in range(1, _CHUNKS):
        more = np.flatnonzero((lengths > 8 * k) & (lengths <= 8 * _CHUNKS))
        if not len(more):
            break
        chunk = chunks[starts[more] + 8 * k] & _MASKS[np.minimum(lengths[more] - 8 * k, 8)]
        hashes[more] = _fmix64(hashes[more] ^ chunk)
    for word in np.flatnonzero(lengths > 8 * _CHUNKS).tolist():
        start = int(starts[word])
        hashes[word] = xxhash.xxh3_64_intdigest(data[start : start + int(lengths[word])].tobytes())
    return hashes


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's finalizer: spreads every input bit over the output, so raw byte chunks and
    Horner sums become well-mixed 64-bit hashes."""
    x = x ^ (x >> _SHIFT)
    x = x * _FMIX_1
    x = x ^ (x >> _SHIFT)
    x = x * _FMIX_2
    return x ^ (x >> _SHIFT)
