"""Gopher's n-gram repetition measures for one document, compiled with numba.

Why: per document and n-gram size, numpy needed a sort, a unique and an isin (top n-grams) or
a Python loop over repeated positions (duplicated n-grams), and every word a Python hash call:
two thirds of the Gopher repetition rule's time. Here the words arrive as one UTF-8 buffer
(joined by spaces, which no word contains), each word's key is a 64-bit FNV-1a hash of its bytes
and each n-gram size one pass with an open-addressed hash table. N-gram keys combine word keys
as `NGramKeys` does. Equal n-grams get equal keys; two different ones share a key with
probability ~2^-64 per pair.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from resources.filter.text_units import NGramKeys

_MIX = NGramKeys._MIX
_FNV64_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV64_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, inline="always")
def _slot(keys: np.ndarray, used: np.ndarray, key: np.uint64) -> int:
    """The table slot holding `key`, or the empty slot where it belongs."""
    mask = keys.size - 1
    slot = np.int64((key ^ (key >> np.uint64(29))) & np.uint64(mask))
    while used[slot] and keys[slot] != key:
        slot = (slot + 1) & mask
    return slot


@njit(cache=True)
def _words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word keys (FNV-1a 64 of each space-separated word's bytes) and offsets (`offsets[i]`: the
    characters, not bytes, in the first i words)."""
    words = 1
    for byte in data:
        words += byte == 32
    keys = np.empty(words, dtype=np.uint64)
    offsets = np.zeros(words + 1, dtype=np.int64)
    word, key, chars = 0, _FNV64_OFFSET, 0
    for byte in data:
        if byte == 32:
            keys[word] = key
            offsets[word + 1] = offsets[word] + chars
            word, key, chars = word + 1, _FNV64_OFFSET, 0
        else:
            key = (key ^ np.uint64(byte)) * _FNV64_PRIME
            chars += (byte & 0xC0) != 0x80  # UTF-8 continuation bytes do not start a character
    keys[word] = key
    offsets[word + 1] = offsets[word] + chars
    return keys, offsets


@njit(cache=True)
def repetition(data: np.ndarray, top_sizes: np.ndarray, dup_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each size n in `top_sizes`: the characters of the most frequent n-gram (its words plus
    the n - 1 spaces joining them) times its count, taking the first position holding a key with
    the highest count, as datatrove's Counter.most_common(1) does; -1 when there are fewer than n
    words. For each n in `dup_sizes`: the characters of n-grams that repeat an earlier one,
    scanning left to right and jumping past each repeat (Gopher's definition). `data`: the words,
    UTF-8, joined by single spaces (at least one word); both size lists ascending."""
    word_keys, offsets = _words(data)
    words = word_keys.size
    capacity = 16
    while capacity < 2 * words:
        capacity *= 2
    table = np.empty(capacity, dtype=np.uint64)
    counts = np.zeros(capacity, dtype=np.int64)
    top = np.full(top_sizes.size, -1, dtype=np.int64)
    dup = np.zeros(dup_sizes.size, dtype=np.int64)
    keys = word_keys.copy()  # keys[i]: the n-gram starting at word i, for the current n
    n = 1
    t = d = 0
    while t < top_sizes.size or d < dup_sizes.size:
        target = min(top_sizes[t] if t < top_sizes.size else 1 << 62, dup_sizes[d] if d < dup_sizes.size else 1 << 62)
        if target > words:
            break
        while n < target:
            for i in range(words - n):
                keys[i] = keys[i] * _MIX + word_keys[i + n]
            n += 1
        positions = words - n + 1
        if t < top_sizes.size and top_sizes[t] == n:
            counts[:] = 0
            best = 0
            for i in range(positions):
                slot = _slot(table, counts, keys[i])
                table[slot] = keys[i]
                counts[slot] += 1
                best = max(best, counts[slot])
            start = 0
            if best > 1:
                while counts[_slot(table, counts, keys[start])] != best:
                    start += 1
            top[t] = (offsets[start + n] - offsets[start] + n - 1) * best
            t += 1
        if d < dup_sizes.size and dup_sizes[d] == n:
            counts[:] = 0
            repeated, free_from = 0, 0
            for i in range(positions):
                if i < free_from:
                    continue
                slot = _slot(table, counts, keys[i])
                if counts[slot]:
                    repeated += offsets[i + n] - offsets[i]
                    free_from = i + n
                else:
                    table[slot] = keys[i]
                    counts[slot] = 1
            dup[d] = repeated
            d += 1
    return top, dup
