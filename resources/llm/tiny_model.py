"""A tiny Llama-architecture model and byte-level BPE tokenizer, built locally in seconds.

Tests, the demo and the rewriting benchmark need a model vLLM can load, and nothing may be
downloaded: a BPE tokenizer trained on local text and a seeded, randomly initialised
`LlamaForCausalLM` saved with `save_pretrained` (the training stage's layout) are enough to test the
machinery. head_dim is 64 (hidden 128, 2 heads), as vLLM's CPU attention kernels require.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEFAULT_TEXT_FILES = (Path(__file__).resolve().parents[2] / "data" / "reference" / "wikitext2_reference.txt",)
BOS, EOS, PAD = "<|begin|>", "<|end|>", "<|pad|>"
_MARKER = "tiny_model.json"  # what the directory was built from; an unchanged spec is not rebuilt
SHAPE = {"vocab_size": 1024, "hidden_size": 128, "num_heads": 2, "num_layers": 2, "max_position_embeddings": 1024}
SEED = 0


def _lines(text_files: Sequence[Path], max_chars: int) -> Iterator[str]:
    """The first `max_chars` characters of the files: enough for a small vocabulary, and a
    bounded amount so the build stays at a few seconds whatever the files hold."""
    budget = max_chars
    for path in text_files:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if budget <= 0:
                    return
                yield line[:budget]
                budget -= len(line)


def build_tokenizer(text_files: Sequence[Path], vocab_size: int, max_chars: int = 2_000_000) -> Tokenizer:
    """Byte-level BPE (every byte is a token, so no text is ever out of vocabulary) with a BOS
    token added in front of every encoded sequence, like Llama's tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_lines(text_files, max_chars), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def build_tiny_model(out_dir: Path | str, *, text_files: Sequence[Path | str] = DEFAULT_TEXT_FILES) -> Path:
    """Write a loadable model directory (config.json, model.safetensors, tokenizer files, the
    marker naming what it was built from) and return it. A directory already built from the same
    spec is returned as is."""
    out = Path(out_dir)
    files = [Path(p) for p in text_files]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer training text not found: {', '.join(missing)}")
    # The texts by content, not by path: the same text gives the same marker (and every file
    # byte-identical) wherever the project is checked out.
    spec = {"text_sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in files], **SHAPE, "seed": SEED}
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out

    tokenizer = build_tokenizer(files, SHAPE["vocab_size"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.model_max_length = SHAPE["max_position_embeddings"]
    hidden, heads = SHAPE["hidden_size"], SHAPE["num_heads"]
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=SHAPE["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=SHAPE["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    marker.write_text(json.dumps(spec, indent=2, sort_keys=True))
    return out


def train_tiny_checkpoint(
    texts: Sequence[str],
    out_dir: Path,
    *,
    vocab_size: int,
    seq_len: int,
    micro_batch_size: int,
    steps: int,
    lr: float = 3e-3,
    device: str = "auto",
) -> Path:
    """A *trained* checkpoint of our own loop (tokenizer trained here on `texts`, tiny preset,
    every step directory verifiable), for tests and benchmarks that need one in seconds; returns
    the last step directory."""
    import numpy as np

    from resources.tokenize.tokenizer import TokenizerSettings, train_tokenizer
    from resources.train.config import RunSpec, TrainConfig
    from resources.train.data import TokenFile, TokenSource
    from resources.train.trainer import train

    tokenizer = train_tokenizer(iter(texts), TokenizerSettings(vocab_size=vocab_size), out_dir / "tokenizer")
    ids = [i for text in texts for i in (*tokenizer.tokenizer.encode(text).ids, tokenizer.eos_id)]
    tokens = out_dir / "tokens.bin"
    np.asarray(ids, dtype="<u2").tofile(tokens)
    config = TrainConfig(
        seq_len=seq_len,
        micro_batch_size=micro_batch_size,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        lr=lr,
        checkpoint_every=steps,
        device=device,
    )
    spec = RunSpec(str(out_dir / "run"), tokenizer.vocab_size, str(tokenizer.path), eos_token_id=tokenizer.eos_id)
    return train(config, spec, [TokenSource("text", [TokenFile(str(tokens))])]).checkpoint


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--text", type=Path, action="append", help="tokenizer training text (repeatable)")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, text_files=args.text or DEFAULT_TEXT_FILES))


if __name__ == "__main__":
    main()
