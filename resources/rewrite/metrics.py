"""What rewriting does to the data: per output, how its length, wording and quality score compare
with the source it was written from; per recipe, how many outputs the post-filter passed and why
the others left, and a few outputs beside their sources to read.

Per output (columns of the synthetic rows, so a later filter can use them):
- `length_ratio`: characters of the rewrite over characters of the source text the prompt held
  (all of it, unless the source was cut to fit the context);
- `source_overlap`: the share of the rewrite's word `OVERLAP_NGRAM`-grams that occur in that
  source text. 1.0 is a verbatim copy of (a part of) the source, which a clean-up recipe may
  rightly produce and a paraphrasing recipe should not; near 0 the rewrite is in its own words;
- `quality_score` / `source_quality_score`: the quality classifier's score of the rewrite and of
  its source (the classifier that scored the crawl), so "does rewriting raise quality?" is one
  comparison per recipe.

Per recipe the sums are kept (not means), so shards and crawl batches add up exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

OVERLAP_NGRAM = 5  # five words in a row: rare by chance, common in a copied sentence
COPY_OVERLAP = 0.8  # a rewrite sharing this share of its 5-grams with the source is counted as a copy
EXAMPLES_PER_RECIPE = 3
EXCERPT_CHARS = 600
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_overlap(rewrite: str, source: str, n: int = OVERLAP_NGRAM) -> float:
    """Share of the rewrite's word n-grams (n shrinks to the rewrite's length) found in the source."""
    out, src = words(rewrite), words(source)
    n = min(n, len(out))
    if n == 0:
        return 0.0
    grams = [tuple(out[i : i + n]) for i in range(len(out) - n + 1)]
    known = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    return sum(gram in known for gram in grams) / len(grams)


def length_ratio(rewrite: str, source: str) -> float:
    return len(rewrite) / max(len(source), 1)


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


@dataclass
class RecipeMetrics:
    """Sums over one recipe's outputs; kept rows only for the measures of what goes to training."""

    generated: int = 0
    kept: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    scored: int = 0  # kept rows with quality scores (none without a classifier)
    quality_sum: float = 0.0
    source_quality_sum: float = 0.0
    length_ratio_sum: float = 0.0
    overlap_sum: float = 0.0
    copies: int = 0  # kept rows with source_overlap >= COPY_OVERLAP

    def __add__(self, other: RecipeMetrics) -> RecipeMetrics:
        return RecipeMetrics(**{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        body = {name: getattr(self, name) for name in self.__dataclass_fields__}
        body["removed"] = dict(sorted(self.removed.items()))
        return body

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> RecipeMetrics:
        return cls(**{**body, "removed": Counter(body["removed"])})

    def mean(self, total: float, count: int | None = None) -> float | None:
        count = self.kept if count is None else count
        return total / count if count else None


@dataclass
class RewriteMetrics:
    """Per recipe: the sums above and up to `EXAMPLES_PER_RECIPE` kept outputs beside their
    sources (those of the smallest source_doc_id, so the choice does not depend on shard order)."""

    recipes: dict[str, RecipeMetrics] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __add__(self, other: RewriteMetrics) -> RewriteMetrics:
        recipes = dict(self.recipes)
        for name, metrics in other.recipes.items():
            recipes[name] = recipes[name] + metrics if name in recipes else metrics
        examples = {
            name: sorted(self.examples.get(name, []) + other.examples.get(name, []), key=_example_order)[
                :EXAMPLES_PER_RECIPE
            ]
            for name in sorted(set(self.examples) | set(other.examples))
        }
        return RewriteMetrics(dict(sorted(recipes.items())), examples)

    @classmethod
    def of(cls, outputs: pl.DataFrame, sources: Sequence[str]) -> RewriteMetrics:
        """From one shard's outputs, kept and removed (columns recipe, rule, text, source_doc_id
        and the per-output measures), and the source text each prompt held, row for row."""
        recipes: dict[str, RecipeMetrics] = {}
        examples: dict[str, list[dict[str, Any]]] = {}
        table = outputs.with_columns(pl.Series("_source", list(sources), dtype=pl.String))
        for (name,), part in table.group_by("recipe", maintain_order=True):
            kept = part.filter(pl.col("rule").is_null())
            scored = kept.filter(pl.col("quality_score").is_not_null() & pl.col("source_quality_score").is_not_null())
            recipes[name] = RecipeMetrics(
                generated=part.height,
                kept=kept.height,
                removed=Counter(part.get_column("rule").drop_nulls().to_list()),
                scored=scored.height,
                quality_sum=float(scored.get_column("quality_score").sum()),
                source_quality_sum=float(scored.get_column("source_quality_score").sum()),
                length_ratio_sum=float(kept.get_column("length_ratio").sum()),
                overlap_sum=float(kept.get_column("source_overlap").sum()),
                copies=kept.filter(pl.col("source_overlap") >= COPY_OVERLAP).height,
            )
            chosen = kept.sort("source_doc_id").head(EXAMPLES_PER_RECIPE)
            examples[name] = [
                {
                    "source_doc_id": row["source_doc_id"],
                    "source": excerpt(row["_source"]),
                    "rewrite": excerpt(row["text"]),
                    "source_overlap": round(row["source_overlap"], 3),
                    "quality_score": None if row["quality_score"] is None else round(row["quality_score"], 3),
                    "source_quality_score": None
                    if row["source_quality_score"] is None
                    else round(row["source_quality_score"], 3),
                }
                for row in chosen.iter_rows(named=True)
            ]
        return cls(dict(sorted(recipes.items())), dict(sorted(examples.items())))

    def to_dict(self) -> dict[str, Any]:
        return {"recipes": {n: m.to_dict() for n, m in self.recipes.items()}, "examples": self.examples}

    @classmethod
    def from_dict(cls, body: dict[str, Any] | None) -> RewriteMetrics:
        if not body:
            return cls()
        recipes = {n: RecipeMetrics.from_dict(m) for n, m in body.get("recipes", {}).items()}
        return cls(recipes, body.get("examples", {}))

    # -- tables for people ---------------------------------------------------------------------
    SUMMARY_COLUMNS = (
        "recipe",
        "generated",
        "kept",
        "pass rate",
        "removed by rule",
        "quality: rewrite",
        "quality: source",
        "length ratio",
        f"{OVERLAP_NGRAM}-gram overlap",
        "copies",
    )
    EXAMPLE_COLUMNS = ("recipe", "source (excerpt)", "rewrite (excerpt)", "overlap", "quality rewrite / source")

    def summary_rows(self) -> list[tuple[object, ...]]:
        """One row per recipe; means over the kept rewrites (the post-filter's removals are counted
        in pass rate and removed by rule)."""
        rows = []
        for name, m in self.recipes.items():
            removed = ", ".join(f"{rule} {count}" for rule, count in m.removed.most_common()) or "—"
            rows.append(
                (
                    name,
                    m.generated,
                    m.kept,
                    _fixed(m.kept / m.generated if m.generated else None, 2),
                    removed,
                    _fixed(m.mean(m.quality_sum, m.scored)),
                    _fixed(m.mean(m.source_quality_sum, m.scored)),
                    _fixed(m.mean(m.length_ratio_sum), 2),
                    _fixed(m.mean(m.overlap_sum)),
                    m.copies,
                )
            )
        return rows

    def example_rows(self) -> list[tuple[object, ...]]:
        return [
            (
                name,
                e["source"],
                e["rewrite"],
                f"{e['source_overlap']:.2f}",
                "—" if e["quality_score"] is None else f"{e['quality_score']:.2f} / {e['source_quality_score']:.2f}",
            )
            for name, examples in self.examples.items()
            for e in examples
        ]


def _example_order(example: dict[str, Any]) -> str:
    return example["source_doc_id"]


def _fixed(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
