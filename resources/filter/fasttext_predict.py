"""fastText's top-label prediction for supervised hierarchical-softmax models (lid.176), bit for bit,
compiled with numba.

Why: fastText's C++ spends ~1.7 µs per token on lid.176, most of it building every character
n-gram as a std::string and looking it up twice in an unordered_map (the pruned bucket index); it
was half of the filter stage's time. This kernel walks each text's UTF-8 bytes once, hashes the
n-grams incrementally (FNV-1a over bytes is a running hash) and finds buckets in a dense array.

Bit for bit, because removal details and the kept rows carry the score: the same tokens (ASCII
whitespace and NUL separate them; "__label__..." tokens are skipped; a literal "</s>" ends the
line; every line ends with "</s>"), the same rows added in the same order in float32 without
fused multiply-add (the fastText wheel is built without it, so is numba's code without fastmath),
the same scale by float32(1 / rows), the same depth-first search of the Huffman tree with its
pruning and tie rule, and the same float/double conversions around libm's expf and log.
tests/unit/filter/test_fasttext_predict.py compares every label and probability with fastText's on
lid.176 and on models trained in the test (word n-grams, no pruning, no subwords).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Self

import numpy as np
from numba import njit

from resources.filter.fasttext_file import FastTextArrays, compiled_prediction_supported

_EOS = np.frombuffer(b"</s>", dtype=np.uint8)
_LABEL = np.frombuffer(b"__label__", dtype=np.uint8)
_FNV_OFFSET = 2166136261
_NOT_PRUNED, _NOTHING_KEPT, _PRUNED = -1, 0, 1


class _Model(NamedTuple):
    """The arrays the kernel reads (a tuple, so numba takes it as one argument)."""

    table: np.ndarray  # int32, power-of-two size: open-addressed entry index by FNV hash, -1 empty
    entry_bytes: np.ndarray  # uint8: every entry's bytes, back to back
    entry_offsets: np.ndarray  # int64 (entries + 1)
    word_rows_offsets: np.ndarray  # int64 (words + 1): a vocabulary word's rows, in fastText's order
    word_rows: np.ndarray  # int32
    prune_mode: int  # _NOT_PRUNED, _NOTHING_KEPT or _PRUNED
    bucket_rows: np.ndarray  # int32 (bucket,) when pruned: the row of a bucket id, -1 when dropped
    bucket_kept: np.ndarray  # uint8 bitmap of bucket_rows >= 0: 1/32 of its size, so it stays in cache
    nwords: int
    eos_entry: int  # "</s>"'s entry index, -1 when not in the vocabulary
    eos_hash: int
    bucket: int
    bucket_inverse: float  # 1 / bucket
    minn: int
    maxn: int
    word_ngrams: int
    input: np.ndarray  # float32 (rows, dim)
    output: np.ndarray  # float32 (labels, dim)
    left: np.ndarray  # int32 (2 * labels - 1): the Huffman tree, -1 at leaves
    right: np.ndarray


@njit(cache=True, inline="always")
def _fnv_step(h: int, byte: int) -> int:
    """One byte of fastText's FNV-1a: the byte sign-extended (C++ int8_t), 32-bit wraparound."""
    return ((h ^ (byte | 0xFFFFFF00 if byte >= 128 else byte)) * 16777619) & 0xFFFFFFFF


@njit(cache=True)
def _fnv(data: np.ndarray, start: int, end: int) -> int:
    h = _FNV_OFFSET
    for i in range(start, end):
        h = _fnv_step(h, data[i])
    return h


@njit(cache=True)
def _lookup(model: _Model, data: np.ndarray, start: int, end: int, h: int) -> int:
    """The entry index of the token data[start:end], or -1."""
    mask = model.table.size - 1
    slot = h & mask
    while model.table[slot] >= 0:
        entry = model.table[slot]
        if _is(data, start, end, model.entry_bytes[model.entry_offsets[entry] : model.entry_offsets[entry + 1]]):
            return entry
        slot = (slot + 1) & mask
    return -1


@njit(cache=True, inline="always")
def _mod(h: int, bucket: int, inverse: float) -> int:
    """h % bucket for a 32-bit hash, by a multiplication: an integer division costs as much as the
    rest of an n-gram's work. The float quotient is off by at most one; the remainder is fixed up."""
    r = h - np.int64(h * inverse) * bucket
    if r < 0:
        return r + bucket
    return r - bucket if r >= bucket else r


@njit(cache=True, inline="always")  # called per n-gram: a call would copy the whole model tuple
def _bucket_row(model: _Model, bucket_id: int) -> int:
    """fastText's pushHash: the row of a bucket id (after the words), or -1 when pruned away."""
    if model.prune_mode == _NOT_PRUNED:
        return model.nwords + bucket_id
    if model.prune_mode == _NOTHING_KEPT:
        return -1
    if not (model.bucket_kept[bucket_id >> 3] >> (bucket_id & 7)) & 1:
        return -1
    row = model.bucket_rows[bucket_id]
    return -1 if row < 0 else model.nwords + row


@njit(cache=True)
def _subword_rows(model: _Model, word: np.ndarray, length: int, out: np.ndarray, n: int) -> int:
    """fastText's computeSubwords on word[:length] ("<token>"): append the rows of its character
    n-grams of minn..maxn characters to out[n:], return the new count. Continuation bytes never
    start an n-gram; single characters at the edges ("<", ">") are not n-grams."""
    for i in range(length):
        if (word[i] & 0xC0) == 0x80:
            continue
        h = _FNV_OFFSET
        j = i
        chars = 1
        while j < length and chars <= model.maxn:
            h = _fnv_step(h, word[j])
            j += 1
            while j < length and (word[j] & 0xC0) == 0x80:
                h = _fnv_step(h, word[j])
                j += 1
            if chars >= model.minn and not (chars == 1 and (i == 0 or j == length)):
                row = _bucket_row(model, _mod(h, model.bucket, model.bucket_inverse))
                if row >= 0:
                    out[n] = row
                    n += 1
            chars += 1
    return n


@njit(cache=True)
def _vocabulary_rows(model: _Model) -> tuple[np.ndarray, np.ndarray]:
    """Each vocabulary word's rows as fastText's initNgrams stores them: the word, then its
    n-grams ("</s>" has none)."""
    offsets = np.zeros(model.nwords + 1, dtype=np.int64)
    capacity = 0
    for word in range(model.nwords):
        capacity += 1 + (model.entry_offsets[word + 1] - model.entry_offsets[word] + 2) * max(model.maxn, 0)
    rows = np.empty(capacity, dtype=np.int32)
    scratch = np.empty(0, dtype=np.uint8)
    n = 0
    for word in range(model.nwords):
        first, last = model.entry_offsets[word], model.entry_offsets[word + 1]
        rows[n] = word
        n += 1
        if not _is(model.entry_bytes, first, last, _EOS):
            scratch = _wrap(model.entry_bytes, first, last, scratch)
            n = _subword_rows(model, scratch, last - first + 2, rows, n)
        offsets[word + 1] = n
    return offsets, rows[:n].copy()


@njit(cache=True)
def _is(data: np.ndarray, start: int, end: int, token: np.ndarray) -> bool:
    if end - start != token.size:
        return False
    for i in range(token.size):  # noqa: SIM110 - numba compiles loops, not generator expressions
        if data[start + i] != token[i]:
            return False
    return True


@njit(cache=True)
def _starts_with(data: np.ndarray, start: int, end: int, prefix: np.ndarray) -> bool:
    return end - start >= prefix.size and _is(data, start, start + prefix.size, prefix)


@njit(cache=True)
def _wrap(data: np.ndarray, start: int, end: int, scratch: np.ndarray) -> np.ndarray:
    """ "<" + data[start:end] + ">" in `scratch` (grown when too small)."""
    if scratch.size < end - start + 2:
        scratch = np.empty(2 * (end - start + 2), dtype=np.uint8)
    scratch[0] = 60  # "<"
    scratch[1 : end - start + 1] = data[start:end]
    scratch[end - start + 1] = 62  # ">"
    return scratch


@njit(cache=True, inline="always")
def _is_space(byte: int) -> bool:
    """fastText's readWord separators; "\\n" too, as the texts' newlines become spaces."""
    return byte == 32 or byte == 10 or byte == 13 or byte == 9 or byte == 11 or byte == 12 or byte == 0


@njit(cache=True, inline="always")
def _std_log(x: np.float32) -> np.float32:
    """fastText's std_log: a float argument, log(x + 1e-5) in double, a float result."""
    return np.float32(math.log(np.float64(x) + 1e-5))


@njit(cache=True)
def _hidden(
    model: _Model, data: np.ndarray, start: int, end: int, hidden: np.ndarray, rows: np.ndarray, hashes: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """fastText's getLine + computeHidden for one text: sums the rows of its tokens into
    `hidden` (float32, in fastText's order) and scales by float32(1 / rows). Returns the row
    count and the scratch arrays (`rows`, `hashes`), grown when a text needed more."""
    hidden[:] = 0
    count = 0
    tokens = 0
    scratch = np.empty(0, dtype=np.uint8)
    pos = start
    while True:
        while pos < end and _is_space(data[pos]):
            pos += 1
        first = pos
        while pos < end and not _is_space(data[pos]):
            pos += 1
        at_end = first == pos  # nothing left: the line's "\n" reads as "</s>"
        if at_end:
            h, entry = model.eos_hash, model.eos_entry
        elif _starts_with(data, first, pos, _LABEL):
            continue  # a label, known or not: not an input
        else:
            h = _fnv(data, first, pos)
            entry = _lookup(model, data, first, pos, h)
        n = 0
        if entry >= 0:
            n = model.word_rows_offsets[entry + 1] - model.word_rows_offsets[entry]
            if rows.size < n:
                rows = np.empty(2 * n, dtype=np.int32)
            rows[:n] = model.word_rows[model.word_rows_offsets[entry] : model.word_rows_offsets[entry + 1]]
        elif not at_end and not _is(data, first, pos, _EOS):
            if rows.size < (pos - first + 2) * model.maxn:
                rows = np.empty(2 * (pos - first + 2) * model.maxn, dtype=np.int32)
            scratch = _wrap(data, first, pos, scratch)
            n = _subword_rows(model, scratch, pos - first + 2, rows, 0)
        for r in range(n):
            row = rows[r]
            for j in range(hidden.size):
                hidden[j] += model.input[row, j]
        count += n
        if tokens == hashes.size:
            grown = np.empty(2 * hashes.size + 16, dtype=np.int32)
            grown[:tokens] = hashes[:tokens]
            hashes = grown
        hashes[tokens] = h - (1 << 32) if h >= (1 << 31) else h  # fastText keeps them as int32
        tokens += 1
        if at_end or _is(data, first, pos, _EOS):
            break
    for i in range(tokens):  # fastText's addWordNgrams: 64-bit wraparound over sign-extended hashes
        h64 = np.uint64(np.int64(hashes[i]))
        for j in range(i + 1, min(tokens, i + model.word_ngrams)):
            h64 = h64 * np.uint64(116049371) + np.uint64(np.int64(hashes[j]))
            row = _bucket_row(model, np.int64(h64 % np.uint64(model.bucket)))
            if row >= 0:
                for k in range(hidden.size):
                    hidden[k] += model.input[row, k]
                count += 1
    if count > 0:
        scale = np.float32(1.0 / count)
        for j in range(hidden.size):
            hidden[j] *= scale
    return count, rows, hashes


@njit(cache=True)
def _top_label(model: _Model, hidden: np.ndarray, stack_nodes: np.ndarray, stack_scores: np.ndarray) -> tuple:
    """fastText's HierarchicalSoftmaxLoss::dfs with k = 1 and threshold 0, as an explicit stack
    (left subtree first, so nodes are visited, and pruned, in the recursion's order); a leaf
    reached replaces the best one, as fastText's heap does on equal scores. Returns (label, log score)."""
    labels = model.output.shape[0]
    floor = _std_log(np.float32(0.0))
    best_node, best_score = -1, np.float32(0.0)
    stack_nodes[0], stack_scores[0] = 2 * labels - 2, np.float32(0.0)
    depth = 1
    while depth > 0:
        depth -= 1
        node, score = stack_nodes[depth], stack_scores[depth]
        if score < floor or (best_node >= 0 and score < best_score):
            continue
        if model.left[node] == -1 and model.right[node] == -1:
            best_node, best_score = node, score
            continue
        row = node - labels
        f = np.float32(0.0)
        for j in range(hidden.size):
            f += model.output[row, j] * hidden[j]
        f = np.float32(1.0 / np.float64(np.float32(1.0) + np.exp(-f)))
        stack_nodes[depth], stack_scores[depth] = model.right[node], score + _std_log(f)
        stack_nodes[depth + 1] = model.left[node]
        stack_scores[depth + 1] = score + _std_log(np.float32(1.0 - np.float64(f)))
        depth += 2
    return best_node, best_score


@njit(cache=True)
def _predict(model: _Model, data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top label (-1 when a text has no input row) and its probability, float32, per text."""
    texts = offsets.size - 1
    labels = np.full(texts, -1, dtype=np.int32)
    probabilities = np.zeros(texts, dtype=np.float32)
    hidden = np.zeros(model.input.shape[1], dtype=np.float32)
    rows = np.empty(64, dtype=np.int32)
    hashes = np.empty(64, dtype=np.int32)
    stack_nodes = np.empty(2 * model.output.shape[0], dtype=np.int64)
    stack_scores = np.empty(2 * model.output.shape[0], dtype=np.float32)
    for t in range(texts):
        count, rows, hashes = _hidden(model, data, offsets[t], offsets[t + 1], hidden, rows, hashes)
        if count == 0:
            continue
        label, score = _top_label(model, hidden, stack_nodes, stack_scores)
        labels[t] = label
        probabilities[t] = np.exp(score)
    return labels, probabilities


def _huffman_tree(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """fastText's buildTree over the label counts (sorted by count, descending, in the file)."""
    labels = len(counts)
    count = np.full(2 * labels - 1, 10**15, dtype=np.int64)
    count[:labels] = counts
    left = np.full(2 * labels - 1, -1, dtype=np.int32)
    right = np.full(2 * labels - 1, -1, dtype=np.int32)
    leaf, node = labels - 1, labels
    for i in range(labels, 2 * labels - 1):
        picked = []
        for _ in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                picked.append(leaf)
                leaf -= 1
            else:
                picked.append(node)
                node += 1
        left[i], right[i] = picked
        count[i] = count[picked[0]] + count[picked[1]]
    return left, right


@dataclass(frozen=True)
class FastTextPredictor:
    """Top-label predictions of a fastText model file, as `model.predict(texts, k=1)` gives them."""

    labels: list[str]
    _model: _Model

    @classmethod
    def build(cls, arrays: FastTextArrays) -> Self:
        """From a file read with its matrices (`read_fasttext_file(path, keep_matrices=True)`)
        that this kernel `supports`."""
        if not compiled_prediction_supported(arrays) or arrays.input is None or arrays.output is None:
            raise ValueError("only hierarchical-softmax models with a dense output matrix, read with their matrices")
        return cls(arrays.labels, _arrays_to_model(arrays))

    def predict(self, texts: list[str]) -> tuple[list[int], np.ndarray]:
        """Per text, the index of its top label in `labels` (-1 when it has no input at all) and
        the label's probability (float32, as fastText computes it)."""
        encoded = [text.encode("utf-8") for text in texts]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        labels, probabilities = _predict(self._model, data, offsets)
        return labels.tolist(), probabilities


def _arrays_to_model(arrays: FastTextArrays) -> _Model:
    lengths = [len(entry) for entry in arrays.entries]
    entry_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=entry_offsets[1:])
    entry_bytes = np.frombuffer(b"".join(arrays.entries), dtype=np.uint8)
    table = np.full(1 << max(4, (2 * len(lengths)).bit_length()), -1, dtype=np.int32)
    for entry in range(len(lengths)):
        slot = _fnv(entry_bytes, entry_offsets[entry], entry_offsets[entry + 1]) & (table.size - 1)
        while table[slot] >= 0:
            slot = (slot + 1) & (table.size - 1)
        table[slot] = entry
    bucket_rows = np.full(arrays.bucket if arrays.pruned is not None and arrays.pruned.size else 0, -1, np.int32)
    if bucket_rows.size:
        bucket_rows[arrays.pruned[:, 0]] = arrays.pruned[:, 1]
    prune_mode = _NOT_PRUNED if arrays.pruned is None else _PRUNED if arrays.pruned.size else _NOTHING_KEPT
    left, right = _huffman_tree(arrays.counts[arrays.nwords :])
    empty = np.zeros(0, dtype=np.int64)
    model = _Model(
        table=table,
        entry_bytes=entry_bytes,
        entry_offsets=entry_offsets,
        word_rows_offsets=empty,
        word_rows=np.zeros(0, dtype=np.int32),
        prune_mode=prune_mode,
        bucket_rows=bucket_rows,
        bucket_kept=np.packbits(bucket_rows >= 0, bitorder="little"),
        nwords=arrays.nwords,
        eos_entry=arrays.entries.index(b"</s>") if b"</s>" in arrays.entries else -1,
        eos_hash=_fnv(_EOS, 0, _EOS.size),
        bucket=arrays.bucket,
        bucket_inverse=1.0 / arrays.bucket if arrays.bucket else 0.0,
        minn=arrays.minn,
        maxn=arrays.maxn,
        word_ngrams=arrays.word_ngrams,
        input=np.ascontiguousarray(arrays.input),
        output=np.ascontiguousarray(arrays.output),
        left=left,
        right=right,
    )
    offsets, rows = _vocabulary_rows(model)
    return model._replace(word_rows_offsets=offsets, word_rows=rows)
