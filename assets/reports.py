"""Views for people: what the crawl batches hold, what decontamination removed, and the report."""

import posixpath

import dagster as dg
import polars as pl

from assets.evaluate import MODEL_COMPARISON, RESULTS, SAMPLES, read_history
from assets.ingest import RAW_DOCUMENTS
from assets.train import CHECKPOINT
from resources.common.catalog import LineageCatalog
from resources.common.storage import UNPARTITIONED, Manifest, ShardInfo, ShardStore, sha256_bytes, stable_hash
from resources.evaluate.report import (
    Section,
    funnel_plot,
    loss_plot,
    markdown_table,
    metrics_plot,
    removed_plot,
    render_html,
    render_markdown,
    tokens_plot,
)
from resources.resources import CatalogResource, StorageResource
from resources.train.checkpoints import MANIFEST_FILE
from resources.train.mixture import TRAINING_MIXTURE, read_mixture

_SUMMARY_SQL = """
SELECT crawl, crawl_batch, count(*) AS documents, count(DISTINCT domain) AS domains,
       count(DISTINCT warc_path) AS files, min(fetch_time) AS first_fetch, max(fetch_time) AS last_fetch
FROM documents WHERE asset = ? GROUP BY crawl, crawl_batch ORDER BY crawl, crawl_batch
"""


@dg.asset(
    deps=[RAW_DOCUMENTS],
    group_name="reports",
    code_version="1",
    kinds={"duckdb"},
    description="Documents, domains and fetch times per crawl batch, from the lineage catalog.",
)
def crawl_summary(catalog: CatalogResource) -> dg.MaterializeResult:
    table = catalog.catalog().query(_SUMMARY_SQL, [RAW_DOCUMENTS])
    top_domains = catalog.catalog().query(
        "SELECT domain, count(*) AS documents FROM documents WHERE asset = ?"
        " GROUP BY domain ORDER BY documents DESC, domain LIMIT 20",
        [RAW_DOCUMENTS],
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(stable_hash(table.rows())[:32]),
        metadata={
            "crawl_batches": table.height,
            "documents": int(table.get_column("documents").sum() or 0),
            "by_crawl_batch": dg.MetadataValue.md(markdown_table(table.rows(), table.columns)),
            "top_domains": dg.MetadataValue.md(markdown_table(top_domains.rows(), top_domains.columns)),
        },
    )


@dg.asset(
    deps=["filtered_documents"],
    group_name="reports",
    code_version="1",
    kinds={"duckdb"},
    description="Which evaluation set each decontamination removal matched, per crawl batch.",
)
def decontamination_report(catalog: CatalogResource) -> dg.MaterializeResult:
    lineage = catalog.catalog()
    by_set = lineage.decontamination()
    examples = lineage.query(
        "SELECT split_part(detail, ':', 1) AS eval_set, url, doc_id, crawl_batch,"
        " CAST(split_part(detail, ':', 2) AS BIGINT) AS matched_ngrams FROM removed"
        " WHERE rule = 'decontamination_ngram_overlap' ORDER BY matched_ngrams DESC, url LIMIT 50"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(stable_hash(examples.rows() + by_set.rows())[:32]),
        metadata={
            "removed": int(by_set.get_column("removed").sum() or 0),
            "by_eval_set": dg.MetadataValue.md(markdown_table(by_set.rows(), by_set.columns)),
            "documents": dg.MetadataValue.md(markdown_table(examples.rows(), examples.columns)),
        },
    )


REPORT = "report"
FUNNEL_STAGES = ("raw_documents", "filtered_documents", "scored_documents", "deduplicated_documents")
_FUNNEL_SQL = """
SELECT crawl_batch, asset AS stage, rows AS documents FROM materializations WHERE asset IN ({stages})
QUALIFY row_number() OVER (PARTITION BY asset, crawl_batch ORDER BY created_at DESC) = 1
ORDER BY crawl_batch, stage
"""
_REMOVED_SQL = "SELECT stage, rule, crawl_batch, count(*) AS removed FROM removed GROUP BY ALL ORDER BY ALL"


@dg.asset(
    name=REPORT,
    deps=[MODEL_COMPARISON, CHECKPOINT, TRAINING_MIXTURE, "decontamination_report"],
    group_name="reports",
    code_version="1",
    kinds={"html"},
    description="The whole pipeline on one page: filter funnel per crawl batch, why documents were removed, "
    "tokens by source, loss curves, eval metrics over checkpoints, samples, decontamination. Markdown here, "
    "plus a standalone HTML file.",
)
def report(storage: StorageResource, catalog: CatalogResource) -> dg.MaterializeResult:
    store = storage.store()
    sections = report_sections(store, catalog.catalog())
    title = "crawl2ckpt report"
    directory = store.partition_dir(REPORT, None)
    files = []
    for name, body in [
        ("report.html", render_html(title, sections).encode()),
        ("report.md", render_markdown(title, sections, inline_images=False).encode()),
        *((f"{s.plot.name}.png", s.plot.png) for s in sections if s.plot is not None),
    ]:
        store.write_bytes(posixpath.join(directory, name), body)
        files.append(ShardInfo(name, 0, len(body), sha256_bytes(body), name.rsplit(".", 1)[1]))
    manifest = store.commit(Manifest(asset=REPORT, partition=UNPARTITIONED, files=files))
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={
            "html": dg.MetadataValue.path(posixpath.join(store.url(REPORT, UNPARTITIONED), "report.html")),
            "report": dg.MetadataValue.md(render_markdown(title, sections, inline_images=True)),
        },
    )


def report_sections(store: ShardStore, lineage: LineageCatalog) -> list[Section]:
    results, samples = read_history(store, RESULTS), read_history(store, SAMPLES)
    mixture, _ = read_mixture(store)
    funnel = lineage.query(_FUNNEL_SQL.format(stages=", ".join(f"'{s}'" for s in FUNNEL_STAGES)))
    removed = lineage.query(_REMOVED_SQL)
    latest = results.filter(pl.col("evaluation_id") == results.get_column("evaluation_id")[-1])
    checkpoint = latest.row(0, named=True)
    curves = loss_curves(store, results.get_column("checkpoint").unique(maintain_order=True).to_list())
    totals = dict(funnel.group_by("stage").agg(pl.col("documents").sum()).iter_rows())
    per_stage = [(stage, totals[stage]) for stage in FUNNEL_STAGES if stage in totals]
    sections = [
        Section(
            "Summary",
            "\n\n".join(
                [
                    "Documents: " + " → ".join(f"{s.replace('_documents', '')} {n:,}" for s, n in per_stage),
                    "Train tokens: "
                    + ", ".join(f"{n} {spec.get('train_tokens', 0):,}" for n, spec in sorted(mixture.items())),
                    f"Latest checkpoint: {checkpoint['checkpoint']}, {checkpoint['tokens_seen']:,} tokens seen, "
                    f"final train loss {curves[checkpoint['checkpoint']][-1]:.4f}"
                    if curves.get(checkpoint["checkpoint"])
                    else f"Latest checkpoint: {checkpoint['checkpoint']}",
                    "Bits per byte: "
                    + ", ".join(f"{r['eval_set']} {r['bits_per_byte']:.4f}" for r in latest.iter_rows(named=True)),
                ]
            ),
        ),
        Section(
            "Evaluation of the latest checkpoint",
            columns=["eval set", "documents", "bytes", "loss", "perplexity", "bits/byte", "unigram bits/byte"],
            rows=latest.select(
                "eval_set", "documents", "bytes", "loss", "perplexity", "bits_per_byte", "unigram_bits_per_byte"
            ).rows(),
        ),
        Section("Evaluation over checkpoints", plot=metrics_plot(results)),
        Section("Training loss", plot=loss_plot(curves) if curves else None, text="" if curves else "no loss history"),
        Section(
            "Tokens by source",
            plot=tokens_plot(mixture),
            columns=["source", "train tokens", "weight", "sampling factor"],
            rows=[
                (n, s.get("train_tokens", 0), s.get("weight", 0.0), s.get("sampling_factor", 0.0))
                for n, s in sorted(mixture.items())
            ],
        ),
        Section("Filter funnel", plot=funnel_plot(funnel, FUNNEL_STAGES), columns=funnel.columns, rows=funnel.rows()),
    ]
    if removed.height:
        sections.append(Section("Removed documents by rule", plot=removed_plot(removed)))
    decontamination = lineage.decontamination()
    sections.append(
        Section(
            "Decontamination",
            "Training documents removed for sharing 13-grams with an eval set."
            if decontamination.height
            else "No training document matched an eval set.",
            columns=decontamination.columns if decontamination.height else [],
            rows=decontamination.rows(),
        )
    )
    latest_samples = samples.filter(pl.col("evaluation_id") == checkpoint["evaluation_id"]) if samples.height else None
    if latest_samples is not None and latest_samples.height:
        sections.append(
            Section(
                "Samples from the latest checkpoint",
                columns=["prompt", "sample", "end"],
                rows=latest_samples.select("prompt", "text", "finish_reason").rows(),
            )
        )
    return sections


def loss_curves(store: ShardStore, checkpoints: list[str]) -> dict[str, list[float]]:
    """Each evaluated checkpoint's loss history, as its manifest records it (older checkpoints
    may not: they are left out)."""
    curves = {}
    for relative in checkpoints:
        path = posixpath.join(store.partition_dir(CHECKPOINT, None), relative, MANIFEST_FILE)
        try:
            history = store.read_json(path).get("loss_history")
        except (OSError, ValueError):
            continue
        if history:
            curves[relative] = history
    return curves
