"""The one place training is configured: `TrainConfig` (the YAML `training:` section, every setting
the loop and the pipeline's generation choice use) and `RunSpec` (what only the data can say: the
vocabulary, the tokenizer, where the run writes, which checkpoint it continues)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Settings that only change how fast a run goes or what it logs, not the weights it ends with.
EXECUTION_KNOBS = frozenset({"device", "compile", "checkpoint_every", "log_every", "peak_flops"})


class TrainConfig(BaseModel):
    """One training run. Defaults are the pipeline's (a tiny model trained on CPU in a minute)."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "tiny"  # resources.train.presets.PRESETS
    seq_len: int = Field(default=128, ge=8)
    micro_batch_size: int = Field(default=8, ge=1, description="sequences per forward pass per process")
    grad_accum_steps: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    max_steps: int = Field(default=60, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="final LR as a fraction of `lr`")
    warmup_steps: int = Field(default=10, ge=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="WSD: the last fraction of steps decays linearly to the final LR"
    )
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(
        default=1.0, ge=0, description="max global grad norm; 0 disables clipping (the norm is still checked)"
    )
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="auto: bf16 autocast on GPU, fp32 on CPU"
    )
    cooldown_fraction: float = Field(
        default=0.1, ge=0, lt=1, description="MeCo: with token_shards.metadata_prefix, the final steps train without it"
    )
    load_optimizer: bool = Field(default=False, description="when continuing: also take over the AdamW moments")
    continue_training: bool = Field(default=False, description="start from the previous generation's weights")
    replay_fraction: float = Field(default=0.1, ge=0, lt=1, description="with continue_training: share of old data")
    device: str = Field(default="auto", description="auto: cuda:LOCAL_RANK when there is a GPU, else cpu")
    compile: bool = Field(default=False, description="torch.compile the model (GPU; on CPU it needs a C++ toolchain)")
    checkpoint_every: int = Field(default=20, ge=1, description="the final step is always saved too")
    log_every: int = Field(default=10, ge=1, description="steps between loss read-backs (NaN checks, progress)")
    peak_flops: float | None = Field(default=None, description="per device, for MFU; default: see train.throughput")

    def output_shaping(self) -> dict[str, object]:
        """The settings whose change alters the checkpoint trained (not its speed or its logging)."""
        return self.model_dump(exclude=EXECUTION_KNOBS)


@dataclass(frozen=True)
class RunSpec:
    """What a run is built on and where it goes, known once the data is. `out_dir` holds the run's
    checkpoint history: a rerun with the same `out_dir` resumes from its latest complete checkpoint
    (and returns at once when it is already done)."""

    out_dir: str
    vocab_size: int  # from the tokenizer; every token id in the data must be below it
    tokenizer_path: str | None = None  # a tokenizer directory copied into every checkpoint (vLLM needs it)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    continue_from: str | None = None  # a step dir or a run dir: continual pre-training from its weights

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, got {self.vocab_size}")


def run_record(config: TrainConfig, spec: RunSpec) -> dict[str, object]:
    """Every setting of a run, as its checkpoints record it (and a resume compares it)."""
    return {**config.model_dump(), **asdict(spec)}
