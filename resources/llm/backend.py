"""What every generation backend takes and returns, so rewriting and evaluation can use any of
them: `Backend.generate(requests) -> generations`, one per request, in order.

Prompts travel as token ids: the caller fitted them to the context by tokens, and the backend
must serve exactly what was counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field


class Sampling(BaseModel):
    """Sampling parameters. `seed` is a base seed: callers derive each request's seed from it
    (rewriting: per source document, see `resources.rewrite.recipes.row_seed`), so requests that
    share a prompt prefix do not draw the same random stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=1)
    frequency_penalty: float = Field(
        default=0.0,
        ge=-2,
        le=2,
        description="lowers a token's logit by this much per earlier use in the output (not the prompt, so "
        "copying the source is not penalised): small models' loops break at 0.3-0.6",
    )
    seed: int = Field(default=0, ge=0)
    stop: tuple[str, ...] = Field(default=(), description="strings that end a generation (not kept)")

    def to_json(self) -> str:
        """The `sampling` column: sorted keys, so equal settings give equal strings."""
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    token_ids: list[int]
    sampling: Sampling
    seed: int


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_tokens)
    prompt_tokens: int
    output_tokens: int


class Backend(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One generation per request, in request order."""
        ...

    def close(self) -> None: ...
