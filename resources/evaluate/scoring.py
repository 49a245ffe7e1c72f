"""How good is a checkpoint: loss, perplexity and bits-per-byte on held-out text, and samples.

Bits-per-byte is the number to compare across checkpoints, mixtures and tokenizers: the summed
negative log-likelihood (in bits) a model gives a text, divided by the text's UTF-8 bytes. The
bytes are the same whatever the tokenizer, so a model that cuts text into fewer, longer tokens
gains nothing from it; loss and perplexity per token only compare models sharing a tokenizer.

Scoring a document follows how training packs it: its tokens come after an EOS and end with one,
so the model predicts every text token given that EOS, then the closing EOS (knowing where a
document ends is part of modelling it; the EOS adds no bytes). A document longer than the
context is cut into windows of `seq_len` predictions, each starting without context (the usual
non-overlapping evaluation: slightly pessimistic next to a sliding window, and cheaper).

The unigram baseline scores the same tokens by their frequency in the training data (add-one
smoothed): a model that does not beat it has learned nothing beyond token counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from resources.common.schemas import TRAIN, VALIDATION
from resources.common.storage import ShardStore
from resources.evaluate.errors import CheckpointLoadError, EvalSetError, EvaluationError
from resources.evaluate.settings import EvalSetSpec, GenerationSettings
from resources.filter.text_sources import TextSourceError, load_text, split_documents
from resources.llm.backend import GenerationRequest, Sampling
from resources.llm.model import inspect_model
from resources.llm.vllm_backend import VLLMBackend
from resources.tokenize.reader import read_token_shards
from resources.tokenize.shards import split_of
from resources.tokenize.tokenizer import TokenizerError, TrainedTokenizer, load_tokenizer
from resources.train.checkpoints import MANIFEST_FILE, CheckpointError, read_manifest, resolve_checkpoint

HELD_OUT = "held_out"
_ENCODE_CHUNK = 256  # documents encoded at a time, until the token budget is spent
_IGNORE = -100
_LN2 = math.log(2)


@dataclass(frozen=True)
class EvalTexts:
    name: str
    documents: Iterable[str]  # a list, or read lazily (the held-out split): iterated once per scoring
    source: str  # the file, or where a held-out split came from
    encoding: str


def load_eval_set(name: str, spec: EvalSetSpec) -> EvalTexts:
    what = f"eval set {name!r}"
    try:
        text, encoding = load_text(spec.path, what=what, encoding=spec.encoding)
        documents = split_documents(text, spec.path, what=what)
    except TextSourceError as exc:
        raise EvalSetError(str(exc)) from exc
    return EvalTexts(name, documents, spec.path, encoding)


@dataclass(frozen=True)
class HeldOutDocuments:
    """The documents tokenization holds out (`split_of`, by doc_id alone) of some partitions, in
    order, read lazily: scoring stops at its token budget, so an evaluation reads a few shards,
    not the whole split of the corpus."""

    store: ShardStore
    asset: str
    partitions: tuple[str, ...]
    validation_fraction: float

    def __iter__(self) -> Iterator[str]:
        for partition in self.partitions:
            manifest = self.store.read_manifest(self.asset, partition)
            if manifest is None:
                raise EvaluationError(f"{self.asset}[{partition}] has no materialization: the held-out split needs it")
            for frame in self.store.iter_frames(manifest, ["doc_id", "text"]):
                held = [split_of(key, self.validation_fraction) == VALIDATION for key in frame.get_column("doc_id")]
                yield from frame.get_column("text").filter(pl.Series(held, dtype=pl.Boolean)).to_list()


def held_out_texts(store: ShardStore, asset: str, partitions: Iterable[str], validation_fraction: float) -> EvalTexts:
    """The held-out split as text: scoring the text rather than the token shards keeps
    bits-per-byte fair across tokenizers."""
    documents = HeldOutDocuments(store, asset, tuple(partitions), validation_fraction)
    return EvalTexts(HELD_OUT, documents, f"{asset}, validation split ({validation_fraction:.1%})", "utf-8")


def training_token_counts(store: ShardStore, sources: dict[str, dict[str, Any]], vocab_size: int) -> np.ndarray:
    """Token frequencies of the train split of every token-shard partition in the mixture
    (`{name: {"asset", "partitions"}}`), without MeCo prefixes: the unigram baseline's data."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for spec in sources.values():
        for partition in spec["partitions"]:
            manifest = store.read_manifest(spec["asset"], partition)
            if manifest is None:
                raise EvaluationError(f"{spec['asset']}[{partition}] has no materialization")
            for shard in read_token_shards(store, manifest):
                counts += token_counts(shard.spans(TRAIN, metadata=False), vocab_size)
    return counts


# --------------------------------------------------------------------------- the model


@dataclass
class LoadedCheckpoint:
    path: Path
    model: torch.nn.Module
    tokenizer: TrainedTokenizer
    seq_len: int
    device: torch.device
    manifest: dict[str, Any]  # our checkpoint manifest; empty for other Hugging Face directories


def pick_device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load_checkpoint(path: str | Path, device: str = "auto") -> LoadedCheckpoint:
    """One of our step directories (verified against its manifest), a run directory (its latest
    verified step) or any Hugging Face causal LM directory with a fast tokenizer."""
    from transformers import AutoModelForCausalLM  # slow import

    root = Path(path)
    if not root.is_dir():
        raise CheckpointLoadError(f"checkpoint directory not found: {root}")
    try:
        if (root / MANIFEST_FILE).exists() or not (root / "config.json").exists():
            root = resolve_checkpoint(root)
        manifest = read_manifest(root) if (root / MANIFEST_FILE).exists() else {}
        tokenizer = load_tokenizer(root)
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32, trust_remote_code=False)
    except (CheckpointError, TokenizerError) as exc:
        raise CheckpointLoadError(f"checkpoint {root} does not load: {exc}") from exc
    except Exception as exc:  # transformers raises many types for one cause: files that are not a model
        raise CheckpointLoadError(f"checkpoint {root} does not load as a causal LM: {exc}") from exc
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer.vocab_size > vocab:
        raise CheckpointLoadError(f"checkpoint {root}: tokenizer has {tokenizer.vocab_size} ids, the model {vocab}")
    seq_len = manifest.get("model", {}).get("seq_len") or min(model.config.max_position_embeddings, 2048)
    target = pick_device(device)
    return LoadedCheckpoint(root, model.to(target).eval(), tokenizer, int(seq_len), target, manifest)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class SetScore:
    eval_set: str
    documents: int
    bytes: int
    tokens: int  # predictions scored: text tokens plus one EOS per document
    nll_nats: float
    unigram_bits: float | None
    encoding: str

    @property
    def loss(self) -> float:
        return self.nll_nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / _LN2 / self.bytes

    @property
    def unigram_bits_per_byte(self) -> float | None:
        return None if self.unigram_bits is None else self.unigram_bits / self.bytes

    def row(self) -> dict[str, Any]:
        """The results table's columns, in order."""
        columns = "eval_set documents bytes tokens loss perplexity bits_per_byte unigram_bits_per_byte encoding"
        return {name: getattr(self, name) for name in columns.split()}


def unigram_log2_probs(counts: np.ndarray) -> np.ndarray:
    """log2 p(token) with add-one smoothing, so a token never seen in training costs a finite amount."""
    smoothed = counts.astype(np.float64) + 1.0
    return np.log2(smoothed / smoothed.sum())


def token_counts(spans: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    spans = [np.asarray(span, dtype=np.int64) for span in spans]
    if not spans:
        return np.zeros(vocab_size, dtype=np.int64)
    return np.bincount(np.concatenate(spans), minlength=vocab_size)[:vocab_size]


def score_texts(
    checkpoint: LoadedCheckpoint,
    texts: EvalTexts,
    *,
    max_tokens: int,
    batch_size: int = 16,
    seq_len: int | None = None,
    unigram: np.ndarray | None = None,
) -> SetScore:
    """`unigram`: log2 probabilities per token id (see `unigram_log2_probs`), or None."""
    tokenizer = checkpoint.tokenizer
    eos = tokenizer.eos_id
    sequences: list[np.ndarray] = []
    used_bytes = 0
    for document, ids in _within_budget(texts.documents, tokenizer.tokenizer, max_tokens):
        sequences.append(np.array([eos, *ids, eos], dtype=np.int64))
        used_bytes += len(document.encode("utf-8"))
    if not sequences:
        raise EvalSetError(f"eval set {texts.name!r} ({texts.source}): no document has any token")
    window = seq_len or checkpoint.seq_len
    nll = _sum_nll(checkpoint, prediction_windows(sequences, window), batch_size)
    targets = np.concatenate([s[1:] for s in sequences])
    unigram_bits = None if unigram is None else float(-unigram[targets].sum())
    return SetScore(texts.name, len(sequences), used_bytes, int(targets.size), nll, unigram_bits, texts.encoding)


def _within_budget(documents: Iterable[str], tokenizer: Tokenizer, max_tokens: int) -> Iterator[tuple[str, list[int]]]:
    """Documents with any token and their tokens, in order, until the next one (and its closing EOS)
    would pass `max_tokens`; the first always comes. Encoded a chunk at a time, so a lazily read
    split is only read as far as the budget goes."""
    budget, taken = max_tokens, False
    remaining = iter(documents)
    while chunk := list(islice(remaining, _ENCODE_CHUNK)):
        for document, encoding in zip(chunk, tokenizer.encode_batch(chunk, add_special_tokens=False), strict=True):
            if not encoding.ids:
                continue
            if taken and len(encoding.ids) + 1 > budget:
                return
            taken, budget = True, budget - len(encoding.ids) - 1
            yield document, encoding.ids


def prediction_windows(sequences: Sequence[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """Windows of at most `seq_len + 1` tokens overlapping by one: each window predicts its last
    `len - 1` tokens, so every token after a document's opening EOS is predicted exactly once."""
    out = []
    for sequence in sequences:
        for start in range(0, len(sequence) - 1, seq_len):
            out.append(sequence[start : start + seq_len + 1])
    return out


@torch.inference_mode()
def _sum_nll(checkpoint: LoadedCheckpoint, windows: list[np.ndarray], batch_size: int) -> float:
    """Longest windows first, right-padded: with causal attention, padding after a token never
    changes that token's prediction, so no attention mask is needed."""
    windows = sorted(windows, key=len, reverse=True)
    total = 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=checkpoint.device.type == "cuda")
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        width = len(batch[0]) - 1
        inputs = np.zeros((len(batch), width), dtype=np.int64)
        labels = np.full((len(batch), width), _IGNORE, dtype=np.int64)
        for row, window in enumerate(batch):
            inputs[row, : len(window) - 1] = window[:-1]
            labels[row, : len(window) - 1] = window[1:]
        x = torch.from_numpy(inputs).to(checkpoint.device)
        y = torch.from_numpy(labels).to(checkpoint.device)
        with autocast:
            logits = checkpoint.model(input_ids=x).logits
        total += float(
            F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=_IGNORE, reduction="sum")
        )
    return total


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    prompt: str
    text: str
    finish_reason: str
    output_tokens: int


def generate_samples(checkpoint: LoadedCheckpoint, settings: GenerationSettings) -> list[Sample]:
    """Each prompt after an EOS, as documents start in training; one seed per prompt (the
    setting's seed plus its position), so a prompt's sample does not depend on the others."""
    if settings.backend == "none" or not settings.prompts:
        return []
    tokenizer = checkpoint.tokenizer
    encoded = tokenizer.tokenizer.encode_batch(settings.prompts, add_special_tokens=False)
    prompts = [[tokenizer.eos_id, *e.ids] for e in encoded]
    if settings.backend == "vllm":
        return _vllm_samples(checkpoint, settings, prompts)
    return _transformers_samples(checkpoint, settings, prompts)


def _vllm_samples(checkpoint: LoadedCheckpoint, settings: GenerationSettings, prompts: list[list[int]]) -> list[Sample]:
    sampling = Sampling(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens)
    max_len = max(len(p) for p in prompts) + settings.max_tokens
    with VLLMBackend.start(inspect_model(checkpoint.path), settings.vllm, max(max_len, checkpoint.seq_len)) as backend:
        generations = backend.generate(
            [GenerationRequest(p, sampling, settings.seed + i) for i, p in enumerate(prompts)]
        )
    return [
        Sample(prompt, g.text, g.finish_reason, g.output_tokens)
        for prompt, g in zip(settings.prompts, generations, strict=True)
    ]


@torch.inference_mode()
def _transformers_samples(
    checkpoint: LoadedCheckpoint, settings: GenerationSettings, prompts: list[list[int]]
) -> list[Sample]:
    samples = []
    tokenizer = checkpoint.tokenizer
    for i, (prompt, ids) in enumerate(zip(settings.prompts, prompts, strict=True)):
        torch.manual_seed(settings.seed + i)
        sampled = settings.temperature > 0
        output = checkpoint.model.generate(
            torch.tensor([ids], device=checkpoint.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=checkpoint.device),
            max_new_tokens=settings.max_tokens,
            do_sample=sampled,
            temperature=settings.temperature if sampled else None,
            top_p=settings.top_p if sampled else None,
            eos_token_id=tokenizer.eos_id,
            pad_token_id=tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id,
        )[0, len(ids) :].tolist()
        stopped = bool(output) and output[-1] == tokenizer.eos_id
        text = tokenizer.tokenizer.decode(output[:-1] if stopped else output)
        samples.append(Sample(prompt, text, "stop" if stopped else "length", len(output)))
    return samples
