"""Tokenizers: train a byte-level BPE on a sample of the corpus, or load an existing one.

Byte-level BPE (GPT-2's pre-tokenizer and byte alphabet) encodes any string without an unknown
token and decodes back to the exact text, which the token shards' contract relies on
(`decode(document tokens) == text`). The trained tokenizer is written with transformers'
`save_pretrained`, so the training stage, vLLM and anyone else load it with
`AutoTokenizer.from_pretrained(directory)` (a fast tokenizer with `eos_token`/`pad_token` set).

Which documents to train on is the caller's choice; `resources.common.sampling.sample_texts` gives
the recommended sample: the `sample_documents` documents with the smallest `doc_id` among
`sample_partitions` partitions picked by the hash of their key. `doc_id` is a content hash, so
that is a uniform random sample that does not depend on shard order, partition order or run
order, and both memory and reading are bounded by the settings, not by the corpus. Adding a crawl
batch can move the sample (and so the tokenizer, and every token shard after it): teams that
want a stable vocabulary train once and switch to `mode: load`.

Determinism: `tokenizers`' BPE trainer counts words in parallel but merges by (count, pair),
so the same texts give a byte-identical `tokenizer.json`, hence the same `version`; the tests
check this.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # where eos/pad are named
BYTE_ALPHABET = 256


class TokenizerError(RuntimeError):
    """A tokenizer cannot be trained or loaded."""


class TokenizerSettings(BaseModel):
    """How the tokenizer is obtained: trained here on a corpus sample, or loaded from a directory."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["train", "load"] = "train"
    vocab_size: int = Field(
        default=8192, description="train mode: the target, special tokens included (a small corpus may give fewer)"
    )
    special_tokens: list[str] = Field(
        default_factory=lambda: [EOS_TOKEN, PAD_TOKEN], description="train mode: given the first ids, in this order"
    )
    eos_token: str = Field(default=EOS_TOKEN, description="train mode: appended after every document")
    pad_token: str = Field(default=PAD_TOKEN, description="train mode: for batching only, never in token shards")
    sample_documents: int = Field(default=20_000, ge=1, description="train mode: documents to train on")
    sample_partitions: int = Field(
        default=32, ge=1, description="train mode: crawl batches the sample is drawn from (picked by key hash)"
    )
    min_frequency: int = Field(default=2, ge=1, description="train mode: a merge needs at least this many occurrences")
    path: str | None = Field(default=None, description="load mode: a directory saved with save_pretrained")

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerSettings:
        if self.mode == "load":
            if not self.path:
                raise ValueError("mode 'load' needs path (a tokenizer directory)")
            return self
        if not self.special_tokens or any(not token for token in self.special_tokens):
            raise ValueError("special_tokens must be non-empty strings")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")
        for role, token in (("eos_token", self.eos_token), ("pad_token", self.pad_token)):
            if token not in self.special_tokens:
                raise ValueError(f"{role} {token!r} must be one of special_tokens {self.special_tokens}")
        if self.eos_token == self.pad_token:
            # A loss mask built from the pad id would then also hide every document end.
            raise ValueError("eos_token and pad_token must differ")
        smallest = BYTE_ALPHABET + len(self.special_tokens)
        if not smallest <= self.vocab_size < 1 << 32:
            raise ValueError(f"vocab_size must be in [{smallest}, 2**32): 256 bytes plus the special tokens at least")
        return self


@dataclass(frozen=True)
class TrainedTokenizer:
    """A tokenizer directory on disk (trained here or elsewhere) and what the shards need of it."""

    tokenizer: Tokenizer
    path: Path  # loadable by AutoTokenizer.from_pretrained
    version: str  # hash of tokenizer.json and the eos/pad names: same version, same token ids
    vocab_size: int  # highest id + 1, added tokens included: the embedding rows a model needs
    eos_token: str
    eos_id: int
    pad_token: str | None
    pad_id: int | None
    documents: int = 0  # texts it was trained on here; 0 when loaded
    seconds: float = 0.0

    def metadata(self) -> dict[str, str | int | float]:
        """Flat values for a Dagster MaterializeResult."""
        values: dict[str, str | int | float] = {
            "tokenizer_version": self.version,
            "vocab_size": self.vocab_size,
            "eos_token": self.eos_token,
            "eos_id": self.eos_id,
            "path": str(self.path),
        }
        if self.pad_token is not None and self.pad_id is not None:
            values.update(pad_token=self.pad_token, pad_id=self.pad_id)
        if self.documents:
            values.update(training_documents=self.documents, train_seconds=round(self.seconds, 3))
        return values


class _Counted:
    """Passes texts through to the trainer while counting those with any non-space character."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.documents = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            if text and not text.isspace():
                self.documents += 1
            yield text


def train_tokenizer(
    texts: Iterable[str], settings: TokenizerSettings, out_dir: str | os.PathLike[str]
) -> TrainedTokenizer:
    """Train a byte-level BPE on `texts` (streamed once) and save it to `out_dir` with
    `save_pretrained`. Raises TokenizerError when the texts hold no text at all."""
    if settings.mode != "train":
        raise TokenizerError(f"settings are for mode {settings.mode!r}: use load_tokenizer({settings.path!r})")
    started = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        min_frequency=settings.min_frequency,
        special_tokens=settings.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown token
        show_progress=False,
    )
    counted = _Counted(texts)
    tokenizer.train_from_iterator(counted, trainer)
    if not counted.documents:
        raise TokenizerError("cannot train a tokenizer: no training text (no documents, or only blank ones)")
    # Imported here: transformers takes seconds to import, and only this function needs it.
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=settings.eos_token, pad_token=settings.pad_token
    )
    fast.save_pretrained(str(out_dir))
    return replace(load_tokenizer(out_dir), documents=counted.documents, seconds=time.perf_counter() - started)


def load_tokenizer(path: str | os.PathLike[str]) -> TrainedTokenizer:
    """A tokenizer directory as `save_pretrained` writes it: `tokenizer.json`, and
    `tokenizer_config.json` (or an older `special_tokens_map.json`) naming `eos_token`.
    Anything missing or unreadable is a TokenizerError naming the directory."""
    directory = Path(path)
    if not directory.is_dir():
        raise TokenizerError(f"tokenizer directory not found: {directory}")
    file = directory / TOKENIZER_FILE
    if not file.is_file():
        raise TokenizerError(f"{directory} has no {TOKENIZER_FILE} (save a fast tokenizer with save_pretrained)")
    data = file.read_bytes()
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for any malformed file
        raise TokenizerError(f"corrupt {file}: {exc}") from exc
    names = _special_token_names(directory)
    eos_token, pad_token = names.get("eos_token"), names.get("pad_token")
    if eos_token is None:
        raise TokenizerError(f"{directory}: no eos_token in {' or '.join(CONFIG_FILES)}")
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise TokenizerError(f"{directory}: eos_token {eos_token!r} is not in the vocabulary")
    pad_id = None if pad_token is None else tokenizer.token_to_id(pad_token)
    if pad_token is not None and pad_id is None:
        raise TokenizerError(f"{directory}: pad_token {pad_token!r} is not in the vocabulary")
    vocabulary = tokenizer.get_vocab(with_added_tokens=True)
    if not vocabulary:
        raise TokenizerError(f"{file} has an empty vocabulary")
    version = hashlib.sha256(data + json.dumps([eos_token, pad_token]).encode()).hexdigest()[:16]
    return TrainedTokenizer(
        tokenizer=tokenizer,
        path=directory,
        version=version,
        vocab_size=max(vocabulary.values()) + 1,
        eos_token=eos_token,
        eos_id=eos_id,
        pad_token=pad_token,
        pad_id=pad_id,
    )


def _special_token_names(directory: Path) -> dict[str, str]:
    """eos/pad token strings from the first config file that names an eos_token."""
    for name in CONFIG_FILES:
        file = directory / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"corrupt {file}: {exc}") from exc
        if not isinstance(config, dict):
            raise TokenizerError(f"corrupt {file}: not a JSON object")
        names = {role: _content(config.get(role)) for role in ("eos_token", "pad_token")}
        if names["eos_token"] is not None:
            return {role: token for role, token in names.items() if token is not None}
    return {}


def _content(value: Any) -> str | None:
    """A special token as configs store it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None
