"""Views for people: what the crawl batches hold, what decontamination removed, and the report."""

import posixpath

import dagster as dg

from assets.commit import commit, writing
from assets.evaluate import MODEL_COMPARISON
from assets.ingest import RAW_DOCUMENTS
from assets.rewrite import SYNTHETIC
from assets.takedown import TAKEDOWN_REQUESTS
from assets.train import CHECKPOINT
from resources.common.storage import UNPARTITIONED, ShardInfo, sha256_bytes, stable_hash
from resources.common.versioning import OutputVersion
from resources.evaluate.report import markdown_table, render_html, render_markdown
from resources.evaluate.report_sections import crawl_summary_tables, decontamination_examples, report_sections
from resources.lineage.takedown import left_over, occurrences
from resources.resources import CatalogResource, StorageResource
from resources.train.mixture import TRAINING_MIXTURE

REPORT = "report"
REPORT_VERSION = OutputVersion("2")  # 2: rewriting sections, the reference model


@dg.asset(
    deps=[RAW_DOCUMENTS],
    group_name="reports",
    code_version="1",
    kinds={"duckdb"},
    description="Documents, domains and fetch times per crawl batch, from the lineage catalog.",
)
def crawl_summary(catalog: CatalogResource) -> dg.MaterializeResult:
    table, top_domains = crawl_summary_tables(catalog.catalog(), RAW_DOCUMENTS)
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
    examples = decontamination_examples(lineage)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(stable_hash(examples.rows() + by_set.rows())[:32]),
        metadata={
            "removed": int(by_set.get_column("removed").sum() or 0),
            "by_eval_set": dg.MetadataValue.md(markdown_table(by_set.rows(), by_set.columns)),
            "documents": dg.MetadataValue.md(markdown_table(examples.rows(), examples.columns)),
        },
    )


@dg.asset(
    name=REPORT,
    deps=[MODEL_COMPARISON, CHECKPOINT, TRAINING_MIXTURE, "decontamination_report"],
    group_name="reports",
    code_version=REPORT_VERSION.code_version,
    kinds={"html"},
    description="The whole pipeline on one page: filter funnel per crawl batch, why documents were removed, "
    "what rewriting did, tokens by source, loss curves, eval metrics over checkpoints beside a reference model, "
    "samples, decontamination. Markdown here, plus a standalone HTML file.",
)
def report(
    context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
) -> dg.MaterializeResult:
    with writing(context, storage) as store:
        sections = report_sections(store, catalog.catalog(), CHECKPOINT, SYNTHETIC)
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
        manifest = commit(context, store, REPORT_VERSION, files)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(manifest.data_version),
        metadata={
            "html": dg.MetadataValue.path(posixpath.join(store.url(REPORT, UNPARTITIONED), "report.html")),
            "report": dg.MetadataValue.md(render_markdown(title, sections, inline_images=True)),
        },
    )


TAKEDOWN_REPORT = "takedown_report"


def build_takedown_report(outputs: list[str]) -> dg.AssetsDefinition:
    """`outputs`: the per-batch assets whose documents and token shards a takedown must empty."""

    @dg.asset(
        name=TAKEDOWN_REPORT,
        deps=[TAKEDOWN_REQUESTS, CHECKPOINT, *outputs],
        group_name="takedown",
        code_version="1",
        kinds={"duckdb"},
        check_specs=[dg.AssetCheckSpec("nothing_left", asset=TAKEDOWN_REPORT)],
        description="Per takedown request: its documents, what of them (and of their rewrites) each current "
        "output still holds (0 once carried out), the checkpoints that trained on them and those trained since "
        "without them. Raw documents are the crawl as fetched and are counted apart.",
    )
    def takedown_report(catalog: CatalogResource) -> dg.MaterializeResult:
        entries = occurrences(catalog.catalog())
        columns = ["request", "created", "reason", "match", "documents", "raw records", "left in outputs"]
        columns += ["left per output", "trained on by", "retrained without"]
        rows = [
            [
                e["request_id"],
                e["created_at"],
                e["reason"],
                e["match"],
                e["documents"],
                e["raw_records"],
                left_over(e),
                ", ".join(f"{k} {v}" for k, v in {**e["stages"], **e["token_shards"]}.items()) or "-",
                ", ".join(e["trained_on_by"]) or "-",
                ", ".join(e["retrained_without"]) or "-",
            ]
            for e in entries
        ]
        left = {e["request_id"]: left_over(e) for e in entries}
        return dg.MaterializeResult(
            data_version=dg.DataVersion(stable_hash(entries)[:32]),
            metadata={
                "requests": len(entries),
                "left_in_outputs": sum(left.values()),
                "requests_table": dg.MetadataValue.md(markdown_table(rows, columns) if rows else "no requests"),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="nothing_left",
                    passed=not any(left.values()),
                    metadata={"left_per_request": dg.MetadataValue.json(left)},
                )
            ],
        )

    return takedown_report
