"""The filter stage's decisions on the shared web-warc crawl, recorded so that a faster filter can
be held to exactly the decisions of the one before it (test_filter_decisions.py).

Each document (as our ingest extracts it, Resiliparse) is judged by `DocumentFilter` under two
configurations: datatrove's defaults with all of WikiText-2 valid as the eval set, and the demo's
multilingual stop words with two eval sets, the demo's WikiText excerpt and the web-warc pages'
own `with` snippets (evaldata.json, so that decontamination removes real pages). Recorded per
document: kept or the removal key and detail, language and score, and a hash of the kept text
(C4 edits it).

The fixture was written once by the implementation before the compiled language ID and n-gram
kernels (commit f0241ab), from that checkout's root:

    python -m tests.unit.filter.filter_decisions tests/unit/filter/filter_decisions_web_warc.parquet
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import polars as pl
import yaml

from resources.common.storage import ShardInfo
from resources.filter.decontamination import DecontaminationSettings
from resources.filter.engine import DocumentFilter, FilterSettings
from resources.ingest.engine import ingest_files
from resources.settings import IngestSettings

ROOT = Path(__file__).resolve().parents[3]
WEB_WARC = ROOT.parent / "shared" / "corpora" / "web-warc"
WIKITEXT = ROOT.parent / "shared" / "corpora" / "wikitext-2" / "valid.txt"
FIXTURE = Path(__file__).with_name("filter_decisions_web_warc.parquet")


def web_warc_documents() -> pl.DataFrame:
    frames: list[pl.DataFrame] = []

    def keep(index: int, frame: pl.DataFrame) -> ShardInfo:
        frames.append(frame)
        return ShardInfo(path=str(index), rows=frame.height, bytes=0, sha256="")

    files = sorted(str(path) for path in WEB_WARC.glob("*.warc.gz"))
    ingest_files(files, crawl_batch="web-warc", settings=IngestSettings(workers=2), write_shard=keep)
    return pl.concat(frames)


def configurations(scratch: Path) -> dict[str, tuple[FilterSettings, DecontaminationSettings]]:
    snippets = scratch / "web_warc_snippets.jsonl"
    pages = json.loads((WEB_WARC / "evaldata.json").read_text(encoding="utf-8"))
    with snippets.open("w", encoding="utf-8") as out:
        for page in pages.values():
            for snippet in page["with"]:
                out.write(json.dumps({"text": snippet}) + "\n")
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    return {
        "datatrove_defaults": (
            FilterSettings(),
            DecontaminationSettings(eval_sets={"wikitext2_valid": str(WIKITEXT)}),
        ),
        "demo_with_snippets": (
            FilterSettings.model_validate(demo["filter"]),
            DecontaminationSettings(
                eval_sets={
                    "wikitext2_valid": str(ROOT / "data" / "eval" / "wikitext2_valid_small.txt"),
                    "web_warc_snippets": str(snippets),
                }
            ),
        ),
    }


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def decisions(documents: pl.DataFrame, scratch: Path) -> pl.DataFrame:
    """One row per (configuration, document): doc_id, rule (null: kept), detail, language,
    language_score (kept rows), text_sha1 (kept rows)."""
    rows = []
    for name, (settings, decontamination) in configurations(scratch).items():
        kept, removed = DocumentFilter.build(settings, decontamination).process(documents)
        rows.append(
            kept.select(
                pl.lit(name).alias("configuration"),
                "doc_id",
                pl.lit(None, pl.String).alias("rule"),
                pl.lit(None, pl.String).alias("detail"),
                "language",
                "language_score",
                pl.col("text").map_elements(_sha1, pl.String).alias("text_sha1"),
            )
        )
        rows.append(
            removed.select(
                pl.lit(name).alias("configuration"),
                "doc_id",
                "rule",
                "detail",
                pl.lit(None, pl.String).alias("language"),
                pl.lit(None, pl.Float32).alias("language_score"),
                pl.lit(None, pl.String).alias("text_sha1"),
            )
        )
    return pl.concat(rows).sort("configuration", "doc_id")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        decisions(web_warc_documents(), Path(scratch)).write_parquet(sys.argv[1], compression="zstd")
