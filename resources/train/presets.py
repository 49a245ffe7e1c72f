"""Llama-style model sizes, from a CPU test model to ~1B parameters.

A preset fixes the shape; the vocabulary comes from the tokenizer and the context length from the
training run, so one preset serves every tokenizer. Every preset keeps `head_dim` at 64 or more
(vLLM's attention kernels need it) and saves `architectures=["LlamaForCausalLM"]`, the dtype and
`max_position_embeddings`, which is all vLLM reads to load a checkpoint directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class ModelPreset:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int  # SwiGLU width, ~8/3 of hidden as in Llama
    tie_embeddings: bool  # tied like GPT-2 for the small sizes, untied like TinyLlama at 1B
    context: int  # positions the config advertises (RoPE has no learned positions; vLLM caps prompts here)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, ModelPreset] = {
    # CPU tests and the demo: ~0.2M parameters plus embeddings, a step takes milliseconds.
    "tiny": ModelPreset(128, 2, 2, 2, 384, tie_embeddings=True, context=2048),
    # GPT-2 small's budget (124M with a 50k vocabulary): 12 x 768, 12 heads.
    "small": ModelPreset(768, 12, 12, 12, 2048, tie_embeddings=True, context=2048),
    # GPT-2 medium's budget (~350M): 24 x 1024, 16 heads.
    "medium": ModelPreset(1024, 24, 16, 16, 2816, tie_embeddings=True, context=2048),
    # TinyLlama's shape (1.1B with a 32k vocabulary): 22 x 2048, 32 query heads sharing 4 KV heads.
    "1b": ModelPreset(2048, 22, 32, 4, 5632, tie_embeddings=False, context=2048),
}


def model_config(
    preset: str,
    vocab_size: int,
    seq_len: int,
    *,
    dtype: torch.dtype = torch.float32,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> LlamaConfig:
    """The `LlamaConfig` for a preset. `dtype` is what the checkpoint should be served in (the
    training compute dtype); weights themselves are kept and saved in fp32 for exact resume."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    p = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads,
        head_dim=p.head_dim,
        max_position_embeddings=max(p.context, seq_len),
        rms_norm_eps=1e-5,
        tie_word_embeddings=p.tie_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype=dtype,
        use_cache=True,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config


def build_model(config: LlamaConfig) -> LlamaForCausalLM:
    """A freshly initialised fp32 model using PyTorch SDPA attention (flash / memory-efficient
    kernels on GPU). Initialisation draws from torch's global RNG: seed it first."""
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def flop_params(config: LlamaConfig) -> int:
    """Parameters that do matmul work per token, counted without building the model: the input
    embedding is a lookup and costs nothing unless it is tied to (and so is) the output head."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = config.head_dim
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
    mlp = 3 * hidden * config.intermediate_size
    norms = 2 * hidden
    return config.num_hidden_layers * (attention + mlp + norms) + hidden + config.vocab_size * hidden


def total_params(config: LlamaConfig) -> int:
    """All parameters, the embedding included once more when it is not tied to the head."""
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return flop_params(config) + embedding


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B / nanoGPT's `estimate_mfu`: 6N for the weight
    matmuls (forward + backward) plus 12 * layers * heads * head_dim * seq_len for attention."""
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return 6.0 * flop_params(config) + attention
