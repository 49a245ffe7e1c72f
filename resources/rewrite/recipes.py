"""Rewriting recipes: named, versioned prompt templates with their sampling and their share of
the corpus.

A recipe is everything that decides what a synthetic document looks like: the template, the
sampling parameters, the prompt budget and which source documents it is applied to. The library
holds the techniques the literature found useful (WRAP/Nemotron-CC style encyclopedic rephrasing,
Q&A pairs as in Instruction Pre-Training, key-knowledge extraction, ProX/RefineX-style clean-up);
a settings file picks recipes by name and overrides any field, or defines new ones.

`recipe_fingerprint()` hashes every output-shaping field, version included, so an edited template
makes the rewritten asset stale even if nobody bumped the version; the version is still stored on
every output row, so a corpus can be filtered by it later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from resources.common.storage import stable_hash
from resources.llm.backend import Sampling

TEXT_SLOT = "{text}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selection(_Model):
    """Which source documents a recipe is applied to. Empty lists mean "any"; every filter is
    deterministic, so a rerun selects exactly the same documents."""

    quality_range: tuple[float, float] | None = Field(
        default=None,
        description="low <= quality_score < high (a high of 1 includes 1): e.g. rephrase the middle "
        "quality buckets and extract knowledge from the top ones, as Nemotron-CC does",
    )
    languages: list[str] = Field(default_factory=list, description="`language` values")
    domains: list[str] = Field(default_factory=list, description="a domain or any of its subdomains")
    crawls: list[str] = Field(default_factory=list, description="`crawl` values (the source snapshot)")
    sample_fraction: float = Field(
        default=1.0, gt=0, le=1, description="share of the matching documents, chosen by a hash of doc_id"
    )
    max_documents: int | None = Field(
        default=None,
        ge=1,
        description="at most this many documents per input shard (those of the smallest sample points): "
        "a bounded generation cost whatever a crawl batch holds",
    )

    @field_validator("quality_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"quality_range must be (low, high) with low < high, got {value}")
        return value

    def required_columns(self) -> set[str]:
        """Columns a shard must have for this selection to be evaluated."""
        needed = {"doc_id"}
        if self.quality_range is not None:
            needed.add("quality_score")
        if self.languages:
            needed.add("language")
        if self.domains:
            needed.add("domain")
        if self.crawls:
            needed.add("crawl")
        return needed


class Recipe(_Model):
    """A prompt template (one `{text}` slot where the source document goes) and its settings.

    The template is the instruction: with an instruct model it is the user message of a chat,
    rendered by the model's own chat template (`chat_template: required`, the default, refuses a
    model without one, so an instruct recipe never silently runs as a bare completion); for a base
    model, one of our checkpoints say, `if_present` or `never` send it as a plain prompt followed
    by `cue`, the words the answer starts after.
    """

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    version: str = Field(min_length=1, description="bump when the template or its intent changes")
    template: str
    cue: str = Field(default="", description="plain prompts only: appended after the template (e.g. 'Answer:\\n')")
    chat_template: Literal["required", "if_present", "never"] = Field(
        default="required",
        description="required: chat-format the prompt, refuse a model without a chat template; if_present: "
        "chat-format when the model has a template, else a plain prompt; never: always a plain prompt",
    )
    system: str | None = Field(default=None, description="chat only: a system message (default: the template's own)")
    sampling: Sampling = Field(default_factory=Sampling)
    max_prompt_tokens: int | None = Field(
        default=None, ge=16, description="cap on the prompt; the model context minus max_tokens caps it too"
    )
    selection: Selection = Field(default_factory=Selection)

    @model_validator(mode="after")
    def _one_slot(self) -> Self:
        if self.template.count(TEXT_SLOT) != 1:
            raise ValueError(f"recipe {self.name!r}: the template must contain {TEXT_SLOT} exactly once")
        return self

    @property
    def fingerprint(self) -> str:
        return stable_hash(self.model_dump())[:12]

    def render(self, text: str) -> str:
        """The instruction with the document in it. A plain replace, not str.format, so braces in
        templates and documents (code, JSON, LaTeX) need no escaping."""
        return self.template.replace(TEXT_SLOT, text)

    def messages(self, text: str) -> list[dict[str, str]]:
        """The chat a chat template renders: the optional system message, then the instruction."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.render(text)}]

    def select(self, frame: pl.DataFrame) -> pl.Series:
        """Boolean mask of the rows of `frame` this recipe is applied to."""
        missing = self.selection.required_columns() - set(frame.columns)
        if missing:
            raise ValueError(f"recipe {self.name!r} selects on column(s) the documents lack: {sorted(missing)}")
        s = self.selection
        mask = pl.lit(True)
        if s.quality_range is not None:
            low, high = s.quality_range
            score = pl.col("quality_score")
            mask &= (score >= low) & ((score < high) | (score == high) & (high >= 1))
        if s.languages:
            mask &= pl.col("language").is_in(s.languages)
        if s.domains:
            domain = pl.col("domain").str.to_lowercase()
            matches = [(domain == d.lower()) | domain.str.ends_with("." + d.lower()) for d in s.domains]
            mask &= pl.any_horizontal(matches)
        if s.crawls:
            mask &= pl.col("crawl").is_in(s.crawls)
        # with_columns broadcasts a mask of literals only (no filter configured) to every row
        selected = frame.with_columns(mask.fill_null(False).alias("__selected")).get_column("__selected")
        if s.sample_fraction < 1 or s.max_documents is not None:
            points = [sample_point(self.name, doc_id) for doc_id in frame["doc_id"]]
            selected &= pl.Series([p < s.sample_fraction for p in points], dtype=pl.Boolean)
            if s.max_documents is not None and selected.sum() > s.max_documents:
                cutoff = sorted(p for p, chosen in zip(points, selected, strict=True) if chosen)[s.max_documents - 1]
                selected &= pl.Series([p <= cutoff for p in points], dtype=pl.Boolean)
        return selected


def sample_point(recipe: str, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (recipe, doc_id): sampling by it is deterministic and
    stable when other documents come and go, and different recipes sample independently."""
    digest = hashlib.blake2b(f"{recipe}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def row_seed(base_seed: int, doc_id: str) -> int:
    """The seed one generation runs with. Distinct per document, so documents whose prompts share
    a prefix (the template) do not draw the same random stream, and fixed, so a rerun of a shard
    samples the same tokens."""
    digest = hashlib.blake2b(f"{base_seed}\0{doc_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


_SOURCE = "\n\nText:\n{text}"

# Worded for small instruct models too (checked with SmolLM2-135M-Instruct, see DESIGN.md): short,
# concrete instructions, the format spelled out, a low temperature for faithfulness and a frequency
# penalty against the loops such models fall into.
LIBRARY: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="encyclopedic",
            version="2",
            template="Rewrite the following text as a short encyclopedia article. Use a neutral, factual tone and "
            "keep the names, numbers and facts." + _SOURCE,
            cue="\n\nEncyclopedia article:\n",
            sampling=Sampling(temperature=0.3, top_p=0.9, max_tokens=512, frequency_penalty=0.5),
        ),
        Recipe(
            name="qa_pairs",
            version="2",
            # The instruction after the text: SmolLM2-135M answered the text's questions instead of asking
            # its own, or asked "what is the answer to the question" in loops, when it came first.
            template="Text:\n{text}\n\nWrite three questions that this text answers. After each question, write "
            "its answer from the text. Use the format:\nQuestion: ...\nAnswer: ...",
            cue="\n\nQuestion:",
            sampling=Sampling(temperature=0.3, top_p=0.9, max_tokens=512, frequency_penalty=0.5),
        ),
        Recipe(
            name="key_knowledge",
            version="2",
            template="List the key facts of the following text as short bullet points, one fact per line." + _SOURCE,
            cue="\n\nKey facts:\n",
            sampling=Sampling(temperature=0.3, top_p=0.9, max_tokens=384, frequency_penalty=0.5),
        ),
        Recipe(
            name="refine",
            version="2",
            template="Rewrite the following web page text as clean, well-formatted prose. Keep its sentences and "
            "facts, and drop menus, links, advertising and cookie notices." + _SOURCE,
            cue="\n\nClean text:\n",
            sampling=Sampling(temperature=0.2, top_p=0.9, max_tokens=768, frequency_penalty=0.5),
        ),
    )
}


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`, nested mappings key by key (so overriding one sampling
    parameter keeps the others)."""
    merged = dict(base)
    for key, value in override.items():
        nested = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = _merge(merged[key], value) if nested else value
    return merged


def resolve_recipes(chosen: Mapping[str, Mapping[str, Any]]) -> list[Recipe]:
    """Settings -> recipes: each key names a library recipe whose fields the value overrides
    (nested, e.g. `{"qa_pairs": {"selection": {"languages": ["en"]}}}`), or, for a name not in the
    library, a complete new recipe. Sorted by name, so the order of the settings file does not
    change outputs or fingerprints."""
    recipes = []
    for name, override in sorted(chosen.items()):
        base = LIBRARY[name].model_dump() if name in LIBRARY else {}
        try:
            recipes.append(Recipe.model_validate(_merge(base, {**override, "name": name})))
        except ValueError as exc:
            known = ", ".join(sorted(LIBRARY))
            raise ValueError(f"recipe {name!r} is invalid (library recipes: {known}): {exc}") from exc
    return recipes


def recipe_fingerprint(recipes: Sequence[Recipe]) -> str:
    """One hash over every output-shaping field of the recipes (name, version, template, sampling,
    budget, selection): part of the rewritten asset's code_version."""
    return stable_hash(sorted(recipe.model_dump_json() for recipe in recipes))[:12]
