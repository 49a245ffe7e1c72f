"""Synthetic rewriting: source documents in, LLM rewrites (with provenance) out.

Per input shard: every recipe selects its documents (`resources.rewrite.recipes`), prompts are built and
cut to the model's context by tokens, one backend call generates them all (one big batch is what
keeps vLLM busy, and the shared template prefix is served from its prefix cache), and a
post-filter drops empty, truncated, repetitive and refusal outputs into a removed table with the
reason.

Two backends behind one small interface (`Backend.generate(requests) -> generations`):
- `VLLMBackend`: `vllm.LLM` in the same process. Its EngineCore child must be shut down
  explicitly, or the process (a Dagster step) hangs at exit waiting for it: `close()` does that.
- `EndpointBackend`: any OpenAI-compatible `/v1/completions` server (`vllm serve`, a shared GPU
  box), with bounded concurrency and bounded retries with backoff, then a clear `EndpointError`.

Resume (`rewrite_partition`): each finished input shard's outputs are written straight into the
partition directory under their content-addressed names, followed by a small `_staged-*.json`
naming them, their stats, the input shard's sha256 and the rewrite fingerprint (settings, recipes,
model). The manifest, written last, stays the only commit point: readers never see staged shards,
and `ShardStore.commit` removes the staged notes. A run killed half-way leaves notes behind; the
rerun reuses every shard whose note matches its input sha and fingerprint (passed as `done` to
`Rewriter.generate_shards`) and generates only the others. A changed input, recipe or model
changes the note's name, so nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from resources.common.partition_stage import StageOutput, concat_or_none, upstream_manifest
from resources.common.schemas import (
    DOCUMENT_SCHEMA,
    DOCUMENTS,
    PROVENANCE_COLUMNS,
    REMOVED,
    REMOVED_COLUMNS,
    REMOVED_SCHEMA,
    doc_id_of,
)
from resources.common.storage import ShardInfo, ShardStore, stable_hash
from resources.common.versioning import OutputVersion
from resources.filter.heuristics import DocView, GopherRepetition, GopherRepetitionSettings
from resources.rewrite.recipes import Recipe, Sampling, recipe_fingerprint, resolve_recipes, row_seed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import LLM

STAGE = "rewrite"
LOGIC_VERSION = "1"  # bump when this module changes what it writes for the same settings

SOURCE_COLUMNS = ("doc_id", "text", "url", "crawl", "crawl_batch", "warc_path", "warc_record_id", "fetch_time")
OPTIONAL_SOURCE_COLUMNS = ("domain", "language")  # copied when the source has them, null otherwise
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),  # hash of the output text (same normalization as ingest)
    "text": pl.String(),
    "source_doc_id": pl.String(),
    "recipe": pl.String(),
    "recipe_version": pl.String(),
    "model": pl.String(),
    "sampling": pl.String(),  # JSON of the recipe's sampling parameters
    "seed": pl.Int64(),  # the seed this row was generated with
    "finish_reason": pl.String(),
    "prompt_tokens": pl.Int32(),
    "output_tokens": pl.Int32(),
    "source_tokens_cut": pl.Int32(),  # tokens of the source cut to fit the context (0: all of it)
    # the source document's provenance, typed as ingest writes it
    **{
        c: DOCUMENT_SCHEMA[c]
        for c in ("url", "domain", "crawl", "crawl_batch", "warc_path", "warc_record_id", "fetch_time")
    },
    "language": pl.String(),
}
REMOVED_OUTPUT_SCHEMA: dict[str, pl.DataType] = {**REMOVED_SCHEMA, "source_doc_id": pl.String(), "recipe": pl.String()}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_MIB = 1 << 20


class ModelPathError(ValueError):
    """The configured model directory is missing, unreadable or not a loadable model."""


class EndpointError(RuntimeError):
    """The completions endpoint did not answer usefully within the configured retries."""


# --------------------------------------------------------------------------- settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VLLMSettings(_Section):
    """In-process engine options. Only `dtype` shapes outputs; the rest is speed and memory."""

    dtype: str = "auto"
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="on CPU: share of RAM for KV cache")
    max_num_seqs: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)


class EndpointSettings(_Section):
    url: str = Field(default="http://127.0.0.1:8000/v1", description="base URL, up to and including /v1")
    served_model: str | None = Field(default=None, description="the `model` field of requests; default model_path")
    concurrency: int = Field(default=32, ge=1, description="requests in flight")
    retries: int = Field(default=3, ge=0, description="retries per request after the first attempt")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay, doubled each retry")
    timeout_s: float = Field(default=600.0, gt=0, description="per request")
    api_key: str | None = None


class PostFilterSettings(_Section):
    """What an output must pass to be kept; each check can be turned off."""

    min_chars: int = Field(default=1, ge=1, description="after stripping whitespace")
    drop_truncated: bool = Field(default=True, description="drop outputs that hit max_tokens (finish_reason=length)")
    repetition: GopherRepetitionSettings | None = Field(default_factory=GopherRepetitionSettings)
    repetition_min_words: int = Field(
        default=50,
        ge=1,
        description="shorter outputs are not judged for repetition: Gopher's top n-gram fractions are "
        "calibrated on documents of 50+ words (one 3-gram of a 15-word answer is already 20% of it)",
    )
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bI (?:cannot|can't|can ?not|am unable to|'m unable to|am not able to)\b",
            r"\bAs an AI\b",
            r"\bI'm sorry, but\b",
            r"\bI apologi[sz]e\b",
            r"\blanguage model\b",
        ]
    )
    refusal_scan_chars: int = Field(default=300, ge=1, description="refusals are looked for at the start only")

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            re.compile(pattern)
        return patterns


class RewriteSettings(_Section):
    model_path: str = Field(description="a Hugging Face model directory: built by tiny_model, or a training checkpoint")
    tokenizer_path: str | None = Field(default=None, description="default: model_path")
    model_name: str | None = Field(default=None, description="the `model` column; default: directory name + hash")
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
        URL, concurrency or memory settings. The model's content is not read here (settings are
        read when the code location loads, maybe before the model exists): `Rewriter.fingerprint`
        adds it at run time."""
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "model_name": self.model_name,
            "max_model_len": self.max_model_len,
            "dtype": self.vllm.dtype,
            "recipes": recipe_fingerprint(self.resolved_recipes()),
            "post_filter": self.post_filter.model_dump(),
        }


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    tokenizer_path: Path
    max_position_embeddings: int | None
    fingerprint: str


def inspect_model(model_path: str | Path, tokenizer_path: str | Path | None = None) -> ModelInfo:
    """Check that a directory holds a model vLLM can load, before any engine starts (an engine
    fails a minute later and deep in a stack trace). The fingerprint hashes the config, the
    tokenizer files and, per weight file, its size and first and last MiB: cheap for a 100 GB
    model, yet any retraining changes it (every tensor moves)."""
    path = Path(model_path).expanduser()
    hint = "(rewrite.model_path: build one with `python -m resources.llm.tiny_model DIR` or use a training checkpoint)"
    if not path.exists():
        raise ModelPathError(f"model directory {path} does not exist {hint}")
    if not path.is_dir():
        raise ModelPathError(f"model path {path} is not a directory {hint}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelPathError(f"model directory {path} is not readable")
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_bytes())
    except FileNotFoundError:
        raise ModelPathError(f"{path} has no config.json: not a Hugging Face model directory {hint}") from None
    except (OSError, ValueError) as exc:
        raise ModelPathError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelPathError(f"{config_path} is not a model config (no model_type)")
    weights = sorted({p for pattern in _WEIGHT_PATTERNS for p in path.glob(pattern)})
    if not weights:
        raise ModelPathError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
    tokenizer_dir = Path(tokenizer_path).expanduser() if tokenizer_path else path
    tokenizer_files = [tokenizer_dir / name for name in (*_TOKENIZER_FILES, "tokenizer_config.json")]
    if not any(p.is_file() for p in tokenizer_files[: len(_TOKENIZER_FILES)]):
        raise ModelPathError(f"{tokenizer_dir} has no tokenizer ({', '.join(_TOKENIZER_FILES)})")
    digest = hashlib.sha256()
    try:
        for file in [config_path, *(p for p in tokenizer_files if p.is_file())]:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
        for file in weights:
            size = file.stat().st_size
            with open(file, "rb") as handle:
                head = handle.read(_MIB)
                handle.seek(max(size - _MIB, 0))
                tail = handle.read(_MIB)
            digest.update(f"{file.name}\0{size}\0".encode() + head + tail)
    except OSError as exc:
        raise ModelPathError(f"cannot read model files in {path}: {exc}") from exc
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    max_positions = config.get("max_position_embeddings") or text_config.get("max_position_embeddings")
    return ModelInfo(path.resolve(), tokenizer_dir.resolve(), max_positions, digest.hexdigest()[:16])


def load_tokenizer(info: ModelInfo) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer  # slow import, only where a tokenizer is needed

    try:
        return AutoTokenizer.from_pretrained(str(info.tokenizer_path))
    except Exception as exc:  # any loader failure is one message: the files are not a usable tokenizer
        raise ModelPathError(f"cannot load the tokenizer in {info.tokenizer_path}: {exc}") from exc


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: list[int]
    source_tokens_cut: int = 0


class PromptBuilder:
    """Renders recipes and fits them into the context by cutting the source text, by tokens.

    The budget is `max_model_len - max_tokens` (so the answer always fits), lowered further by
    a recipe's `max_prompt_tokens`. Prompts are tokenized here, once, and handed to the backend as
    token ids: what was counted is exactly what the model sees.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def budget(self, recipe: Recipe) -> int:
        budget = self.max_model_len - recipe.sampling.max_tokens
        return min(budget, recipe.max_prompt_tokens) if recipe.max_prompt_tokens else budget

    def overhead(self, recipe: Recipe) -> int:
        """Tokens the template takes with an empty document."""
        return len(self.tokenizer(recipe.render(""))["input_ids"])

    def check(self, recipe: Recipe, min_source_tokens: int = 16) -> None:
        """Fail before generating if a recipe leaves (almost) no room for the document."""
        room = self.budget(recipe) - self.overhead(recipe)
        if room < min_source_tokens:
            raise ValueError(
                f"recipe {recipe.name!r} leaves {room} tokens for the document (max_model_len {self.max_model_len}, "
                f"max_tokens {recipe.sampling.max_tokens}, max_prompt_tokens {recipe.max_prompt_tokens}, "
                f"template {self.overhead(recipe)} tokens): raise max_model_len or lower max_tokens"
            )

    def build(self, recipe: Recipe, texts: Sequence[str]) -> list[Prompt]:
        if not texts:
            return []
        budget = self.budget(recipe)
        encoded = self.tokenizer([recipe.render(text) for text in texts])["input_ids"]
        return [
            Prompt(ids) if len(ids) <= budget else self._cut(recipe, text, budget)
            for text, ids in zip(texts, encoded, strict=True)
        ]

    def _cut(self, recipe: Recipe, text: str, budget: int) -> Prompt:
        """Keep the longest head of the text that fits. Tokens at the cut may merge differently
        once the template follows, so re-encode and shrink until the whole prompt fits."""
        source = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = budget - self.overhead(recipe)
        while True:
            head = self.tokenizer.decode(source[:keep]).rstrip("\ufffd")  # no half a UTF-8 character
            ids = self.tokenizer(recipe.render(head))["input_ids"]
            if len(ids) <= budget or keep <= 0:
                return Prompt(ids, len(source) - keep)
            keep -= len(ids) - budget


# --------------------------------------------------------------------------- backends


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


class VLLMBackend:
    """`vllm.LLM` in this process. `close()` shuts its EngineCore child down; without it a
    Dagster step process hangs at exit waiting for that child."""

    def __init__(self, llm: LLM, model_path: Path) -> None:
        self.llm = llm
        self.model_path = model_path

    @classmethod
    def start(cls, info: ModelInfo, settings: VLLMSettings, max_model_len: int) -> Self:
        """On CPU, prefill is not chunked: vLLM's CPU build fails ("CPU Generator does not use
        offset") when a seeded request's prefill is split across steps, and per-row seeds are
        what makes a rerun of a shard reproduce its bytes."""
        from vllm import LLM  # heavy, and only one of the vLLM builds (CPU or CUDA) is installed
        from vllm.platforms import current_platform

        llm = LLM(
            enable_chunked_prefill=not current_platform.is_cpu(),
            model=str(info.path),
            tokenizer=str(info.tokenizer_path),
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            seed=0,
            **({"max_num_seqs": settings.max_num_seqs} if settings.max_num_seqs else {}),
        )
        return cls(llm, info.path)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                temperature=r.sampling.temperature,
                top_p=r.sampling.top_p,
                max_tokens=r.sampling.max_tokens,
                seed=r.seed,
                stop=list(r.sampling.stop) or None,
            )
            for r in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=r.token_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Generation(
                text=out.outputs[0].text,
                finish_reason=out.outputs[0].finish_reason or "",
                prompt_tokens=len(out.prompt_token_ids or ()),
                output_tokens=len(out.outputs[0].token_ids),
            )
            for out in outputs
        ]

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class EndpointBackend:
    """An OpenAI-compatible completions server. Prompts go as token ids (part of the OpenAI API,
    served by vLLM), so the server sees exactly the prompt that was fitted to the context.

    Transient failures (connection refused or reset, timeouts, HTTP 408/429/5xx) are retried
    `retries` times with exponential backoff; other HTTP errors fail at once. The first request
    that gives up cancels the rest and raises `EndpointError`.
    """

    def __init__(
        self, settings: EndpointSettings, served_model: str, count_tokens: Callable[[str], int] | None = None
    ) -> None:
        self.settings = settings
        self.served_model = served_model
        self.base_url = settings.url.rstrip("/")
        self._count_tokens = count_tokens

    def check(self) -> None:
        """One cheap request, so a wrong URL fails before any shard is read."""
        self._request("GET", "/models")

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(requests))) as pool:
            futures = [pool.submit(self._complete, request) for request in requests]
            finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in finished and f.exception() is not None), None)
            if failed is not None:
                for future in pending:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def _complete(self, request: GenerationRequest) -> Generation:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.served_model,
            "prompt": request.token_ids,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": request.seed,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        answer = self._request("POST", "/completions", body)
        try:
            choice = answer["choices"][0]
            text = choice["text"] or ""
            usage = answer.get("usage") or {}
            output_tokens = usage.get("completion_tokens")
            if output_tokens is None:
                output_tokens = self._count_tokens(text) if self._count_tokens else 0
            return Generation(
                text=text,
                finish_reason=choice.get("finish_reason") or "",
                prompt_tokens=int(usage.get("prompt_tokens", len(request.token_ids))),
                output_tokens=int(output_tokens),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EndpointError(f"{self.base_url}/completions: unexpected answer {str(answer)[:300]}") from exc

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        attempts = self.settings.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code not in _RETRY_STATUS:
                    raise EndpointError(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
                last = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            except json.JSONDecodeError as exc:
                last = f"not JSON: {exc}"
        raise EndpointError(f"{method} {url}: no usable answer after {attempts} attempts; last error: {last}")

    def close(self) -> None:
        """Nothing to release: connections are per request."""


# --------------------------------------------------------------------------- the post-filter


class PostFilter:
    """`(text, finish_reason) -> None` (keep) or `(rule, detail)`. Rules, in order: empty,
    truncated, refusal, repetition (Gopher's rules, the usual failure of sampling loops)."""

    def __init__(self, settings: PostFilterSettings) -> None:
        self.settings = settings
        self._refusal = (
            re.compile("|".join(f"(?:{p})" for p in settings.refusal_patterns), re.IGNORECASE)
            if settings.refusal_patterns
            else None
        )
        self._repetition = GopherRepetition(settings.repetition) if settings.repetition else None

    def __call__(self, text: str, finish_reason: str) -> tuple[str, str] | None:
        s = self.settings
        if len(text) < s.min_chars:
            return "empty", f"chars={len(text)}<{s.min_chars}"
        if s.drop_truncated and finish_reason == "length":
            return "truncated", "finish_reason=length"
        if self._refusal and (match := self._refusal.search(text[: s.refusal_scan_chars])):
            return "refusal", f"matched {match.group(0)!r}"
        if self._repetition:
            doc = DocView(text)
            if len(doc.words) >= s.repetition_min_words and (failure := self._repetition(doc)):
                return "repetition", failure[1]
        return None


# --------------------------------------------------------------------------- the engine


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
    kept: pl.DataFrame  # OUTPUT_SCHEMA
    removed: pl.DataFrame  # REMOVED_OUTPUT_SCHEMA
    stats: RewriteStats


class Rewriter:
    """Selection, prompts, generation, post-filter and output rows for one shard at a time.

    Construction validates everything that can be wrong before generation: the model directory
    and tokenizer, the context length, each recipe's room for the document, and (endpoint
    backend) that the server answers. A backend passed in is borrowed (e.g. one vLLM engine
    shared by a test session or a benchmark) and not closed by `close()`; one built from the
    settings is owned and closed.
    """

    def __init__(self, settings: RewriteSettings, backend: Backend | None = None) -> None:
        self.settings = settings
        self.recipes = settings.resolved_recipes()
        self.model_info = inspect_model(settings.model_path, settings.tokenizer_path)
        self.tokenizer = load_tokenizer(self.model_info)
        positions = self.model_info.max_position_embeddings
        self.max_model_len = settings.max_model_len or positions or self.tokenizer.model_max_length
        if positions and self.max_model_len > positions:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's {positions} positions")
        self.prompts = PromptBuilder(self.tokenizer, self.max_model_len)
        for recipe in self.recipes:
            self.prompts.check(recipe)
        self.model_name = settings.model_name or f"{self.model_info.path.name}-{self.model_info.fingerprint[:8]}"
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
                self.settings.endpoint.served_model or self.settings.model_path,
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
        `duplicate_output`, so doc_id stays unique."""
        texts = [g.text.strip() for g in generations]
        doc_ids = [doc_id_of(text) for text in texts]
        verdicts = [self.post_filter(text, g.finish_reason) for text, g in zip(texts, generations, strict=True)]
        first_of: dict[str, int] = {}
        for i, verdict in enumerate(verdicts):
            if verdict is not None:
                continue
            if doc_ids[i] in first_of:
                row, recipe, _ = jobs[first_of[doc_ids[i]]]
                verdicts[i] = ("duplicate_output", f"same text as the {recipe.name} rewrite of {frame['doc_id'][row]}")
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
            for c, dtype in OUTPUT_SCHEMA.items()
            if c not in sources.columns and c not in generated.columns
        )
        kept = table.filter(pl.col("rule").is_null()).select(pl.col(c).cast(t) for c, t in OUTPUT_SCHEMA.items())
        removed = (
            table.filter(pl.col("rule").is_not_null())
            .select(
                pl.col("doc_id"),
                pl.col("url"),
                pl.col("crawl_batch"),
                pl.lit(STAGE).alias("stage"),
                pl.col("rule"),
                pl.col("detail"),
                pl.when(pl.col("rule") == "duplicate_output").then(pl.col("doc_id")).alias("duplicate_of"),
                pl.col("source_doc_id"),
                pl.col("recipe"),
            )
            .cast(REMOVED_OUTPUT_SCHEMA)
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


# --------------------------------------------------------------------------- a partition, resumable


@dataclass
class RewriteOutput(StageOutput):
    """A `StageOutput` (so the shared stage reporting applies) with the rewriting counts."""

    stats: RewriteStats = field(default_factory=RewriteStats)


@dataclass(frozen=True)
class _Staged:
    files: list[ShardInfo]
    stats: RewriteStats


def _note_path(store: ShardStore, asset: str, partition: str, index: int, input_sha: str, fingerprint: str) -> str:
    name = f"_staged-{index:05d}-{input_sha[:16]}-{fingerprint}.json"
    return posixpath.join(store.partition_dir(asset, partition), name)


def _read_note(store: ShardStore, asset: str, partition: str, note: str) -> _Staged | None:
    """A finished shard from an earlier, interrupted run, if its note and files are all there."""
    if not store.fs.exists(note):
        return None
    body = store.read_json(note)
    staged = _Staged([ShardInfo(**f) for f in body["files"]], RewriteStats.from_dict(body["stats"]))
    directory = store.partition_dir(asset, partition)
    if not all(store.fs.exists(posixpath.join(directory, f.path)) for f in staged.files):
        return None
    return staged


def _stage(store: ShardStore, asset: str, partition: str, index: int, note: str, result: ShardResult) -> _Staged:
    """Write a shard's outputs, then its note: the note is the shard's commit point."""
    files = [store.write_parquet_shard(asset, partition, index, result.kept, DOCUMENTS)]
    if result.removed.height:
        files.append(store.write_parquet_shard(asset, partition, index, result.removed, REMOVED))
    store.write_json(note, {"files": [asdict(f) for f in files], "stats": result.stats.to_dict()})
    return _Staged(files, result.stats)


def rewrite_partition(
    store: ShardStore,
    rewriter: Rewriter,
    version: OutputVersion,
    *,
    asset: str,
    upstream: str,
    partition: str,
    run_id: str,
    on_shard: Callable[[int, int, RewriteStats], None] | None = None,
) -> RewriteOutput:
    """Rewrite every shard of `upstream[partition]` into `asset[partition]`, one output shard per
    input shard, reusing the shards an interrupted run already finished (see the module doc).
    `on_shard(index, shard_count, stats)` is called after each generated shard (progress logs)."""
    started = time.perf_counter()
    source = upstream_manifest(store, upstream, partition)
    paths = store.shard_paths(source)
    shas = [f.sha256 for f in source.files if f.table == DOCUMENTS]
    notes = [_note_path(store, asset, partition, i, sha, rewriter.fingerprint) for i, sha in enumerate(shas)]
    staged = {i: found for i, note in enumerate(notes) if (found := _read_note(store, asset, partition, note))}
    reused = len(staged)
    loaders = [partial(store.read_shard, path) for path in paths]
    for index, result in rewriter.generate_shards(loaders, done=set(staged)):
        staged[index] = _stage(store, asset, partition, index, notes[index], result)
        if on_shard:
            on_shard(index, len(paths), result.stats)
    stats = sum((staged[i].stats for i in range(len(paths))), RewriteStats())
    stats.shards_reused, stats.shards_generated = reused, len(paths) - reused
    manifest = store.commit(
        version.manifest(
            asset,
            partition,
            run_id,
            [f for i in range(len(paths)) for f in staged[i].files],
            inputs={f"{upstream}[{partition}]": source.data_version},
            stats={"rows_in": stats.documents, **stats.to_dict(), "fingerprint": rewriter.fingerprint},
        )
    )
    # Shards an interrupted run finished are reused from storage: the catalog's rows come from there.
    documents = concat_or_none(list(store.iter_frames(manifest, PROVENANCE_COLUMNS)))
    removed = concat_or_none(list(store.iter_frames(manifest, REMOVED_COLUMNS, REMOVED)))
    return RewriteOutput(
        manifest, stats.documents, stats.removed_by_rule, time.perf_counter() - started, documents, removed, stats
    )
