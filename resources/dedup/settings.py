"""Deduplication settings: the MinHash/LSH scheme and what a stage accepts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from resources.dedup.minhash import SketchSpec

# FineWeb's settings (5-grams, 14 bands x 8 rows, any shared bucket is a duplicate) and ours,
# tuned on bench/dedup.py: 3-grams keep more shingles of a lightly edited copy (a 10% edit leaves
# Jaccard ~0.7 instead of ~0.6), 32 bands x 4 rows propose nearly every pair above 0.6, and the
# verification threshold drops the chance collisions small bands let through.
PRESETS: dict[str, dict[str, Any]] = {
    "fineweb": {"ngram": 5, "bands": 14, "rows": 8, "min_similarity": 0.0},
    "high_recall": {"ngram": 3, "bands": 32, "rows": 4, "min_similarity": 0.5},
}


class DedupSettings(BaseModel):
    """A preset, with any of its fields overridden (`DedupSettings(preset="fineweb", ngram=4)`)."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["fineweb", "high_recall"] = "high_recall"
    ngram: int = Field(ge=1, le=64, description="words per shingle")
    bands: int = Field(ge=1, description="LSH bands; more bands, lower similarity proposed")
    rows: int = Field(ge=1, description="signature values per band; more rows, fewer chance candidates")
    min_similarity: float = Field(ge=0, le=1, description="estimated Jaccard a candidate needs; 0 = any candidate")
    seed: int = Field(default=1, ge=0)
    max_bucket_candidates: int = Field(
        default=100, ge=1, description="per band bucket, compare with at most this many earliest members"
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="processes computing signatures, this one included; 0 = the CPUs this process may use",
    )
    batch_bytes: int = Field(default=2 << 20, ge=1 << 10, description="text per signature batch")
    documents_in_memory: int = Field(
        default=100_000,
        ge=1,
        description="documents sketched and matched at once (~1 KB each); a larger partition is deduplicated in "
        "sub-batches of this many, each against everything kept before it",
    )
    index_fanout: int = Field(default=4, ge=2, description="index runs merged into one of the next level")
    index_max_level: int = Field(
        default=8, ge=1, description="runs above this level (index_fanout**level batches) are not merged further"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            preset = data.get("preset", "high_recall")
            return {**PRESETS.get(preset, {}), **data}
        return data

    @property
    def spec(self) -> SketchSpec:
        return SketchSpec(ngram=self.ngram, bands=self.bands, rows=self.rows, seed=self.seed)

    def output_shaping(self) -> dict[str, object]:
        """The settings whose change alters which documents are removed (not how fast)."""
        return self.model_dump(exclude={"workers", "batch_bytes", "index_fanout", "index_max_level"})


class DedupStageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    near: DedupSettings = Field(default_factory=DedupSettings)
    keep_rate_bounds: tuple[float, float] = (0.3, 1.0)
    # A batch waits (retried) while a batch registered before it is still being deduplicated.
    wait_retries: int = Field(default=20, ge=0)
    wait_seconds: float = Field(default=30.0, ge=0)

    def output_shaping(self) -> dict[str, object]:
        return self.near.output_shaping()
