"""The data contracts every stage shares, in one place: a column named here means the same thing in
every Parquet shard, catalog table and UI table (see DESIGN.md, "Data contracts")."""

from __future__ import annotations

import hashlib
import unicodedata

import polars as pl

# Tables of a partition: the documents downstream stages read, and why the others left.
DOCUMENTS = "documents"
REMOVED = "removed"

# The partition key of every per-crawl asset, as a column and a catalog field.
CRAWL_BATCH = "crawl_batch"

# Where a document came from, carried by every document row and copied into the catalog
# (the text itself stays in the shards).
PROVENANCE_COLUMNS: list[str] = ["doc_id", "url", "domain", "crawl", "warc_path", "warc_record_id", "fetch_time"]

DOCUMENT_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "text": pl.String(),
    "url": pl.String(),
    "domain": pl.String(),
    "crawl": pl.String(),
    CRAWL_BATCH: pl.String(),
    "warc_path": pl.String(),
    "warc_record_id": pl.String(),
    "fetch_time": pl.Datetime("us", "UTC"),
    "record_type": pl.String(),
    "content_type": pl.String(),
    "charset": pl.String(),
    "source_bytes": pl.Int64(),
    "capped": pl.Boolean(),
}

# A removed row: which stage dropped the document, by which stable `<filter>_<rule>` key, with
# the measured value in `detail` and, for duplicates, the document it duplicates.
REMOVED_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "url": pl.String(),
    CRAWL_BATCH: pl.String(),
    "stage": pl.String(),
    "rule": pl.String(),
    "detail": pl.String(),
    "duplicate_of": pl.String(),
}

# A synthetic document: a rewrite of a source document by a recipe and a model, with the source's
# provenance.
SYNTHETIC_SCHEMA: dict[str, pl.DataType] = {
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
    # what rewriting did (resources/rewrite/metrics.py): against the source text the prompt held
    "length_ratio": pl.Float32(),  # characters of the rewrite / of the source
    "source_overlap": pl.Float32(),  # share of the rewrite's word 5-grams found in the source
    "quality_score": pl.Float32(),  # the quality classifier's score of the rewrite (null: no classifier)
    "source_quality_score": pl.Float32(),  # ... and of its source
    # the source document's provenance, typed as ingest writes it
    **{
        c: DOCUMENT_SCHEMA[c]
        for c in ("url", "domain", "crawl", "crawl_batch", "warc_path", "warc_record_id", "fetch_time")
    },
    "language": pl.String(),
}
# Removed rewrites also name their source and recipe.
SYNTHETIC_REMOVED_SCHEMA: dict[str, pl.DataType] = {
    **REMOVED_SCHEMA,
    "source_doc_id": pl.String(),
    "recipe": pl.String(),
}

# What the catalog indexes of a synthetic document besides its provenance ("which rewrites of it exist?").
SYNTHETIC_LINEAGE_COLUMNS: list[str] = ["source_doc_id", "recipe", "model"]

# The removed columns the catalog indexes ("why is this document gone?").
REMOVED_COLUMNS: list[str] = ["doc_id", "url", "stage", "rule", "detail", "duplicate_of"]


def doc_id_of(text: str) -> str:
    """Hash of the normalized text: stable across runs, crawls and extractors' whitespace."""
    folded = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    normalized = " ".join(folded.split())
    return hashlib.blake2b(normalized.encode(), digest_size=16).hexdigest()


def removed_rows(frame: pl.DataFrame, stage: str, rule: pl.Expr | str, detail: pl.Expr | str) -> pl.DataFrame:
    """Removed rows for the documents of `frame`, in REMOVED_SCHEMA."""
    as_expr = lambda value: value if isinstance(value, pl.Expr) else pl.lit(value)  # noqa: E731
    return frame.select(
        pl.col("doc_id"),
        pl.col("url"),
        pl.col(CRAWL_BATCH),
        pl.lit(stage).alias("stage"),
        as_expr(rule).cast(pl.String).alias("rule"),
        as_expr(detail).cast(pl.String).alias("detail"),
        (pl.col("duplicate_of") if "duplicate_of" in frame.columns else pl.lit(None))
        .cast(pl.String)
        .alias("duplicate_of"),
    )


# A token shard: a flat token array (table "tokens") and its index (table "token_index"), one row
# per document, tracing every token back to it (see resources/tokenize/shards.py).
TOKENS = "tokens"
TOKEN_INDEX = "token_index"
TRAIN, VALIDATION = "train", "validation"
TOKEN_INDEX_SCHEMA: dict[str, pl.DataType] = {
    "doc_id": pl.String(),
    "offset": pl.Int64(),
    "length": pl.Int64(),
    "prefix_length": pl.Int64(),
    "split": pl.String(),
    "text_bytes": pl.Int64(),
}
