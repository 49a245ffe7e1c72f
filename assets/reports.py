"""Corpus-wide views for people: what the crawl batches hold, straight from the catalog."""

import dagster as dg

from assets.ingest import RAW_DOCUMENTS
from resources.dagster_resources import CatalogResource
from resources.storage import stable_hash

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
            "by_crawl_batch": dg.MetadataValue.md(_markdown(table.rows(), table.columns)),
            "top_domains": dg.MetadataValue.md(_markdown(top_domains.rows(), top_domains.columns)),
        },
    )


def _markdown(rows: list[tuple], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


_DECONTAMINATION_SQL = """
SELECT split_part(detail, ':', 1) AS eval_set, crawl_batch, count(*) AS removed,
       sum(CAST(split_part(detail, ':', 2) AS BIGINT)) AS matched_ngrams
FROM removed WHERE rule = 'decontamination' GROUP BY ALL ORDER BY eval_set, crawl_batch
"""


@dg.asset(
    deps=["filtered_documents"],
    group_name="reports",
    code_version="1",
    kinds={"duckdb"},
    description="Which evaluation set each decontamination removal matched, per crawl batch.",
)
def decontamination_report(catalog: CatalogResource) -> dg.MaterializeResult:
    lineage = catalog.catalog()
    by_set = lineage.query(_DECONTAMINATION_SQL)
    examples = lineage.query(
        "SELECT split_part(detail, ':', 1) AS eval_set, url, doc_id, crawl_batch,"
        " CAST(split_part(detail, ':', 2) AS BIGINT) AS matched_ngrams FROM removed"
        " WHERE rule = 'decontamination' ORDER BY matched_ngrams DESC, url LIMIT 50"
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(stable_hash(examples.rows() + by_set.rows())[:32]),
        metadata={
            "removed": int(by_set.get_column("removed").sum() or 0),
            "by_eval_set": dg.MetadataValue.md(_markdown(by_set.rows(), by_set.columns)),
            "documents": dg.MetadataValue.md(_markdown(examples.rows(), examples.columns)),
        },
    )
