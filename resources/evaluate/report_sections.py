"""What the report shows and the human views read: the report's sections (prose, tables, plots) from
the evaluation history, the training mixture, the lineage catalog and the checkpoints' loss
histories, and the catalog queries behind the crawl summary and the decontamination report."""

from __future__ import annotations

import posixpath

import polars as pl

from resources.common.catalog import LineageCatalog
from resources.common.storage import ShardStore
from resources.evaluate.history import RESULTS, SAMPLES, read_history, read_reference
from resources.evaluate.report import Section, funnel_plot, loss_plot, metrics_plot, removed_plot, tokens_plot
from resources.lineage.audit import NotFound, checkpoint_lineage, checkpoint_summary
from resources.rewrite.metrics import COPY_OVERLAP, OVERLAP_NGRAM, RewriteMetrics
from resources.train.mixture import read_mixture

_SUMMARY_SQL = """
SELECT crawl, crawl_batch, count(*) AS documents, count(DISTINCT domain) AS domains,
       count(DISTINCT warc_path) AS files, min(fetch_time) AS first_fetch, max(fetch_time) AS last_fetch
FROM documents WHERE asset = ? GROUP BY crawl, crawl_batch ORDER BY crawl, crawl_batch
"""

FUNNEL_STAGES = ("raw_documents", "filtered_documents", "scored_documents", "deduplicated_documents")
_FUNNEL_SQL = """
SELECT crawl_batch, asset AS stage, rows AS documents FROM current_materializations
WHERE list_contains(?, asset) ORDER BY crawl_batch, stage
"""
_REMOVED_SQL = "SELECT stage, rule, crawl_batch, count(*) AS removed FROM removed GROUP BY ALL ORDER BY ALL"


def crawl_summary_tables(lineage: LineageCatalog, raw_asset: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Documents, domains, files and fetch times per crawl batch of `raw_asset`, and its top 20 domains."""
    table = lineage.query(_SUMMARY_SQL, [raw_asset])
    top_domains = lineage.query(
        "SELECT domain, count(*) AS documents FROM documents WHERE asset = ?"
        " GROUP BY domain ORDER BY documents DESC, domain LIMIT 20",
        [raw_asset],
    )
    return table, top_domains


def decontamination_examples(lineage: LineageCatalog) -> pl.DataFrame:
    """The 50 removed training documents that matched an eval set the most."""
    return lineage.query(
        "SELECT split_part(detail, ':', 1) AS eval_set, url, doc_id, crawl_batch,"
        " CAST(split_part(detail, ':', 2) AS BIGINT) AS matched_ngrams FROM removed"
        " WHERE rule = 'decontamination_ngram_overlap' ORDER BY matched_ngrams DESC, url LIMIT 50"
    )


def report_sections(
    store: ShardStore, lineage: LineageCatalog, checkpoint_asset: str, synthetic_asset: str | None = None
) -> list[Section]:
    """Summary, latest scores (beside the reference model's, if one was evaluated), metrics over
    checkpoints, loss curves, tokens by source, the filter funnel, removals by rule, what synthetic
    rewriting did (`synthetic_asset`), decontamination and samples."""
    results, samples = read_history(store, RESULTS), read_history(store, SAMPLES)
    reference = read_reference(store)
    mixture, _ = read_mixture(store)
    funnel = lineage.query(_FUNNEL_SQL, [list(FUNNEL_STAGES)])
    removed = lineage.query(_REMOVED_SQL)
    latest = results.filter(pl.col("evaluation_id") == results.get_column("evaluation_id")[-1])
    checkpoint = latest.row(0, named=True)
    curves = loss_curves(
        store, checkpoint_asset, results.get_column("checkpoint").unique(maintain_order=True).to_list()
    )
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
                    *([_reference_line(reference)] if reference.height else []),
                ]
            ),
        ),
        _latest_scores(latest, reference),
        Section("Evaluation over checkpoints", plot=metrics_plot(results, reference if reference.height else None)),
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
    if synthetic_asset is not None:
        sections += rewriting_sections(store, synthetic_asset)
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
    sections.append(lineage_section(lineage))
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


def _reference_line(reference: pl.DataFrame) -> str:
    scores = ", ".join(f"{r['eval_set']} {r['bits_per_byte']:.4f}" for r in reference.iter_rows(named=True))
    return f"Reference model {reference.get_column('model')[0]}: {scores}"


def _latest_scores(latest: pl.DataFrame, reference: pl.DataFrame) -> Section:
    """The latest checkpoint's scores per eval set; the reference model's beside them."""
    columns = ["eval_set", "documents", "bytes", "loss", "perplexity", "bits_per_byte", "unigram_bits_per_byte"]
    names = ["eval set", "documents", "bytes", "loss", "perplexity", "bits/byte", "unigram bits/byte"]
    table = latest.select(columns)
    text = ""
    if reference.height:
        name = reference.get_column("model")[0]
        scores = reference.select("eval_set", pl.col("bits_per_byte").alias("reference"))
        table = table.join(scores, on="eval_set", how="left", maintain_order="left")
        names.append(f"{name} bits/byte")
        text = (
            f"{name} is a reference: a fixed model scored by the same engine on the same text "
            "(its own tokenizer; bits per byte compare across tokenizers)."
        )
    return Section("Evaluation of the latest checkpoint", text, columns=names, rows=table.rows())


def rewriting_sections(store: ShardStore, synthetic_asset: str) -> list[Section]:
    """What rewriting did to the data, summed over every crawl batch: per recipe, the post-filter's
    pass rate and reasons, quality scores of rewrites against their sources, length ratio and
    n-gram overlap; then rewrites beside their sources."""
    manifests = list(store.iter_manifests(synthetic_asset))
    if not manifests:
        return []
    metrics = sum((RewriteMetrics.from_dict(m.stats.get("metrics")) for m in manifests), RewriteMetrics())
    models = sorted({str(m.stats.get("model")) for m in manifests})
    explanation = (
        f"Rewritten by {', '.join(models)} over {len(manifests)} crawl batch(es). Pass rate: share of outputs the "
        "post-filter kept. Means over kept rewrites: quality (the quality classifier's score) of the rewrites and "
        f"of their sources; length ratio (rewrite / source characters); {OVERLAP_NGRAM}-gram overlap (share of the "
        f"rewrite's word {OVERLAP_NGRAM}-grams found in its source: 1.0 is a copy); copies: rewrites with an "
        f"overlap of {COPY_OVERLAP} or more."
    )
    return [
        Section("Synthetic rewriting", explanation, list(metrics.SUMMARY_COLUMNS), metrics.summary_rows()),
        Section(
            "Rewrites beside their sources",
            "A few kept rewrites per recipe (those of the smallest source doc_id), excerpts.",
            list(metrics.EXAMPLE_COLUMNS),
            metrics.example_rows(),
        ),
    ]


def lineage_section(lineage: LineageCatalog) -> Section:
    """What the latest checkpoint was trained on, per source (as `crawl2ckpt lineage checkpoint`
    shows it), and the takedown requests recorded so far."""
    with lineage.connect(read_only=True) as con:
        try:
            answer = checkpoint_lineage(con)
        except NotFound as missing:
            return Section("Lineage", str(missing))
        takedowns = con.execute("SELECT count(*) FROM takedowns").fetchone()[0]
    summary = checkpoint_summary(answer)
    crawls = ", ".join(
        f"{c['crawl']} ({c['crawl_batches']} crawl batches, {c['warc_files']} WARC files)" for c in answer["crawls"]
    )
    parent = f"continued from {answer['continued_from']}" if answer["continued_from"] else "trained from scratch"
    withdrawn = ", ".join(f"{w['request_id']} ({w['documents']} documents)" for w in answer["withdrawn_by"])
    text = (
        f"Latest checkpoint {answer['checkpoint']} (generation {answer['generation']}), {parent}. Crawls: {crawls}. "
        f"Takedown requests recorded: {takedowns}"
        + (f"; this checkpoint trained on documents taken down since: {withdrawn}." if withdrawn else ".")
        + " Ask `crawl2ckpt lineage checkpoint|url|doc|diff` for the rest."
    )
    columns = list(summary[0]) if summary else []
    return Section("Lineage", text, columns=columns, rows=[list(r.values()) for r in summary])


def loss_curves(store: ShardStore, checkpoint_asset: str, checkpoints: list[str]) -> dict[str, list[float]]:
    """Each evaluated checkpoint's loss history, as its manifest records it (older checkpoints
    may not: they are left out)."""
    from resources.train.checkpoints import MANIFEST_FILE  # torch (safetensors): not when definitions load

    curves = {}
    for relative in checkpoints:
        path = posixpath.join(store.partition_dir(checkpoint_asset, None), relative, MANIFEST_FILE)
        try:
            history = store.read_json(path).get("loss_history")
        except (OSError, ValueError):
            continue
        if history:
            curves[relative] = history
    return curves
