"""Which assets run together."""

import dagster as dg

from assets.ingest import RAW_DOCUMENTS
from assets.partitions import crawl_batches

ingest_job = dg.define_asset_job(
    "ingest_crawl_batch",
    selection=[RAW_DOCUMENTS],
    partitions_def=crawl_batches,
    description="Extract the documents of one crawl batch.",
)
