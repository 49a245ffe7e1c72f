"""Synthetic rewriting: source documents in, LLM rewrites (with provenance) out, one shard at a time.

Per input shard: every recipe selects its documents (`resources.rewrite.recipes`), prompts are
built and cut to the model's context by tokens (`resources.rewrite.prompts`), one backend call
generates them all (one big batch is what keeps vLLM busy, and the shared template prefix is
served from its prefix cache), and the post-filter (`resources.rewrite.post_filter`) drops empty,
truncated, repetitive and refusal outputs into a removed table with the reason.

The backends are shared with evaluation (`resources.llm`): vLLM in this process, or any
OpenAI-compatible endpoint. A whole partition, resumable shard by shard, is
`resources.rewrite.resume.rewrite_partition`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from resources.common.schemas import SYNTHETIC_REMOVED_SCHEMA, SYNTHETIC_SCHEMA, doc_id_of
from resources.common.storage import stable_hash
from resources.llm.backend import Backend, Generation, GenerationRequest
from resources.llm.endpoint import EndpointBackend, EndpointSettings
from resources.llm.model import inspect_model, load_tokenizer
from resources.llm.model_source import RewriterModelSettings
from resources.llm.vllm_backend import VLLMBackend, VLLMSettings
from resources.rewrite.post_filter import DUPLICATE_OUTPUT, PostFilter, PostFilterSettings
from resources.rewrite.prompts import Prompt, PromptBuilder
from resources.rewrite.recipes import Recipe, recipe_fingerprint, resolve_recipes, row_seed

STAGE = "rewrite"
LOGIC_VERSION = "2"  # bump when this package changes what it writes for the same settings (2: rewrite_* keys)

SOURCE_COLUMNS = ("doc_id", "text", "url", "crawl", "crawl_batch", "warc_path", "warc_record_id", "fetch_time")
OPTIONAL_SOURCE_COLUMNS = ("domain", "language")  # copied when the source has them, null otherwise


class RewriteSettings(BaseModel):
    """The rewriting stage: model, backend, recipes, post-filter. `output_shaping()` is the one
    declaration of which of them change the rows written."""

    model_config = ConfigDict(extra="forbid")

    model: RewriterModelSettings = Field(
        default_factory=RewriterModelSettings, description="the model the `rewriter_model` asset publishes"
    )
    model_name: str | None = Field(default=None, description="the `model` column; default: the model's name + hash")
    backend: Literal["vllm", "endpoint"] = "vllm"
    max_model_len: int | None = Field(default=None, ge=32, description="default: the model's max_position_embeddings")
    recipes: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"encyclopedic": {}, "qa_pairs": {}},
        description="library recipe name -> overrides (or a full new recipe)",
    )
    post_filter: PostFilterSettings = Field(default_factory=PostFilterSettings)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)
    endpoint: EndpointSettings = Field(default_factory=EndpointSettings)

    @field_validator("recipes")
    @classmethod
    def _resolvable(cls, recipes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        resolve_recipes(recipes)
        return recipes

    def resolved_recipes(self) -> list[Recipe]:
        return resolve_recipes(self.recipes)

    def output_shaping(self) -> dict[str, object]:
        """What changes the rows written, for the asset's code_version: not the backend, its
        URL, concurrency or memory settings, and not the model, an input of its own (the
        `rewriter_model` asset, whose data version is the hash of its files)."""
        return {
            "model_name": self.model_name,
            "max_model_len": self.max_model_len,
            **self.vllm.output_shaping(),
            "recipes": recipe_fingerprint(self.resolved_recipes()),
            "post_filter": self.post_filter.model_dump(),
        }


@dataclass
class RewriteStats:
    """Counts for the run's metadata; shards' stats add up (`+`)."""

    documents: int = 0
    selected: Counter[str] = field(default_factory=Counter)  # per recipe
    prompts: int = 0
    prompts_cut: int = 0  # prompts whose source text was cut to fit the context
    source_tokens_cut: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reasons: Counter[str] = field(default_factory=Counter)
    kept: int = 0
    removed_by_rule: Counter[str] = field(default_factory=Counter)
    generation_seconds: float = 0.0
    shards_generated: int = 0
    shards_reused: int = 0

    def __add__(self, other: RewriteStats) -> RewriteStats:
        return RewriteStats(
            **{
                name: getattr(self, name) + getattr(other, name)
                for name in self.__dataclass_fields__  # Counters add per key, numbers add
            }
        )

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.generation_seconds if self.generation_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for manifests. Not `asdict`: it rebuilds a Counter from its items, which
        counts the (key, count) pairs instead of copying them."""
        body = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("selected", "finish_reasons", "removed_by_rule"):
            body[name] = dict(sorted(body[name].items()))
        body["generation_seconds"] = round(self.generation_seconds, 3)
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> RewriteStats:
        counters = {name: Counter(body[name]) for name in ("selected", "finish_reasons", "removed_by_rule")}
        return cls(**{**body, **counters})


@dataclass
class ShardResult:
    kept: pl.DataFrame  # SYNTHETIC_SCHEMA
    removed: pl.DataFrame  # SYNTHETIC_REMOVED_SCHEMA
    stats: RewriteStats


class Rewriter:
    """Selection, prompts, generation, post-filter and output rows for one shard at a time.

    Construction validates everything that can be wrong before generation: the model directory
    and tokenizer, the context length, each recipe's room for the document, and (endpoint
    backend) that the server answers. A backend passed in is borrowed (e.g. one vLLM engine
    shared by a test session or a benchmark) and not closed by `close()`; one built from the
    settings is owned and closed.
    """

    def __init__(self, settings: RewriteSettings, model_dir: str | Path, backend: Backend | None = None) -> None:
        self.settings = settings
        self.recipes = settings.resolved_recipes()
        self.model_info = inspect_model(model_dir)
        self.tokenizer = load_tokenizer(self.model_info)
        positions = self.model_info.max_position_embeddings
        self.max_model_len = settings.max_model_len or positions or self.tokenizer.model_max_length
        if positions and self.max_model_len > positions:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {positions} positions")
        self.prompts = PromptBuilder(self.tokenizer, self.max_model_len)
        for recipe in self.recipes:
            self.prompts.check(recipe)
        self.model_name = settings.model_name or f"{settings.model.label}-{self.model_info.fingerprint[:8]}"
        self.post_filter = PostFilter(settings.post_filter)
        self.fingerprint = stable_hash(
            {"logic": LOGIC_VERSION, "settings": settings.output_shaping(), "model": self.model_info.fingerprint}
        )[:16]
        if backend is not None:
            borrowed_path = getattr(backend, "model_path", None)
            if borrowed_path is not None and Path(borrowed_path).resolve() != self.model_info.path:
                raise ValueError(f"the engine serves {borrowed_path}, the settings name {self.model_info.path}")
            self.backend, self._owns_backend = backend, False
        else:
            self.backend, self._owns_backend = self._start_backend(), True

    def _start_backend(self) -> Backend:
        if self.settings.backend == "endpoint":
            endpoint = EndpointBackend(
                self.settings.endpoint,
                self.settings.endpoint.served_model or str(self.model_info.path),
                lambda text: len(self.tokenizer(text, add_special_tokens=False)["input_ids"]),
            )
            endpoint.check()
            return endpoint
        return VLLMBackend.start(self.model_info, self.settings.vllm, self.max_model_len)

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one shard -------------------------------------------------------------------------
    def rewrite(self, frame: pl.DataFrame) -> ShardResult:
        """All recipes over one shard of source documents, in one backend call."""
        missing = [c for c in SOURCE_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"source documents lack column(s) {missing}: rewriting needs {list(SOURCE_COLUMNS)}")
        stats = RewriteStats(documents=frame.height)
        jobs: list[tuple[int, Recipe, Prompt]] = []  # (source row, recipe, prompt) per generation
        texts = frame["text"].to_list()
        for recipe in self.recipes:
            selected = recipe.select(frame).arg_true().to_list()
            stats.selected[recipe.name] = len(selected)
            prompts = self.prompts.build(recipe, [texts[row] for row in selected])
            jobs.extend((row, recipe, prompt) for row, prompt in zip(selected, prompts, strict=True))
        doc_ids = frame["doc_id"].to_list()
        seeds = [row_seed(recipe.sampling.seed, doc_ids[row]) for row, recipe, _ in jobs]
        requests = [
            GenerationRequest(prompt.token_ids, recipe.sampling, seed)
            for (_, recipe, prompt), seed in zip(jobs, seeds, strict=True)
        ]
        started = time.perf_counter()
        generations = self.backend.generate(requests) if requests else []
        stats.generation_seconds = time.perf_counter() - started
        if len(generations) != len(requests):
            raise RuntimeError(f"the backend returned {len(generations)} generations for {len(requests)} prompts")
        return self._rows(frame, jobs, seeds, generations, stats)

    def _rows(
        self,
        frame: pl.DataFrame,
        jobs: list[tuple[int, Recipe, Prompt]],
        seeds: list[int],
        generations: list[Generation],
        stats: RewriteStats,
    ) -> ShardResult:
        """Output rows (generation columns + the source's provenance), split by the post-filter.
        Within a shard an output identical to an earlier kept one is dropped as
        `rewrite_duplicate_output`, so doc_id stays unique."""
        texts = [g.text.strip() for g in generations]
        doc_ids = [doc_id_of(text) for text in texts]
        verdicts = [self.post_filter(text, g.finish_reason) for text, g in zip(texts, generations, strict=True)]
        first_of: dict[str, int] = {}
        for i, verdict in enumerate(verdicts):
            if verdict is not None:
                continue
            if doc_ids[i] in first_of:
                row, recipe, _ = jobs[first_of[doc_ids[i]]]
                verdicts[i] = (DUPLICATE_OUTPUT, f"same text as the {recipe.name} rewrite of {frame['doc_id'][row]}")
            else:
                first_of[doc_ids[i]] = i
        rows = [row for row, _, _ in jobs]
        sources = frame.select(
            *(
                pl.col(c).alias("source_doc_id" if c == "doc_id" else c)
                for c in (*SOURCE_COLUMNS, *OPTIONAL_SOURCE_COLUMNS)
                if c in frame.columns and c != "text"
            )
        ).select(pl.all().gather(rows))
        generated = pl.DataFrame(
            {
                "doc_id": doc_ids,
                "text": texts,
                "recipe": [recipe.name for _, recipe, _ in jobs],
                "recipe_version": [recipe.version for _, recipe, _ in jobs],
                "model": [self.model_name] * len(jobs),
                "sampling": [recipe.sampling.to_json() for _, recipe, _ in jobs],
                "seed": seeds,
                "finish_reason": [g.finish_reason for g in generations],
                "prompt_tokens": [g.prompt_tokens for g in generations],
                "output_tokens": [g.output_tokens for g in generations],
                "source_tokens_cut": [prompt.source_tokens_cut for _, _, prompt in jobs],
                "rule": [v[0] if v else None for v in verdicts],
                "detail": [v[1] if v else None for v in verdicts],
            },
            schema_overrides={"rule": pl.String(), "detail": pl.String()},  # typed even when all are kept
        )
        table = pl.concat([generated, sources], how="horizontal").with_columns(
            pl.lit(None, dtype).alias(c)
            for c, dtype in SYNTHETIC_SCHEMA.items()
            if c not in sources.columns and c not in generated.columns
        )
        kept = table.filter(pl.col("rule").is_null()).select(pl.col(c).cast(t) for c, t in SYNTHETIC_SCHEMA.items())
        removed = (
            table.filter(pl.col("rule").is_not_null())
            .select(
                pl.col("doc_id"),
                pl.col("url"),
                pl.col("crawl_batch"),
                pl.lit(STAGE).alias("stage"),
                pl.col("rule"),
                pl.col("detail"),
                pl.when(pl.col("rule") == DUPLICATE_OUTPUT).then(pl.col("doc_id")).alias("duplicate_of"),
                pl.col("source_doc_id"),
                pl.col("recipe"),
            )
            .cast(SYNTHETIC_REMOVED_SCHEMA)
        )
        stats.prompts = len(jobs)
        stats.prompts_cut = sum(prompt.source_tokens_cut > 0 for _, _, prompt in jobs)
        stats.source_tokens_cut = sum(prompt.source_tokens_cut for _, _, prompt in jobs)
        stats.prompt_tokens = sum(g.prompt_tokens for g in generations)
        stats.output_tokens = sum(g.output_tokens for g in generations)
        stats.finish_reasons = Counter(g.finish_reason for g in generations)
        stats.kept = kept.height
        stats.removed_by_rule = Counter(v[0] for v in verdicts if v)
        return ShardResult(kept, removed, stats)

    # -- many shards -----------------------------------------------------------------------
    def generate_shards(
        self,
        frames: Iterable[pl.DataFrame | Callable[[], pl.DataFrame]],
        *,
        done: AbstractSet[int] = frozenset(),
    ) -> Iterator[tuple[int, ShardResult]]:
        """`(index, result)` for every input shard whose index is not in `done`, in order. A shard
        may be given as a loader (`lambda: read(path)`), so shards that are done are never read."""
        for index, frame in enumerate(frames):
            if index in done:
                continue
            yield index, self.rewrite(frame() if callable(frame) else frame)
