"""Takedown requests as Dagster sees them: an observable source partitioned by crawl batch, whose
data version per batch is the hash of the requests that hit it. The filter stage depends on it
partition to partition, so a request makes exactly the batches holding its documents stale."""

import warnings

import dagster as dg

from assets.partitions import crawl_batches
from resources.lineage.takedown import batch_versions
from resources.resources import CatalogResource

TAKEDOWN_REQUESTS = "takedown_requests"


warnings.filterwarnings("ignore", "Function `observable_source_asset` is currently in beta", dg.BetaWarning)


@dg.observable_source_asset(
    name=TAKEDOWN_REQUESTS,
    partitions_def=crawl_batches,
    group_name="takedown",
    description="Takedown requests (crawl2ckpt takedown, or files dropped in `takedown.inbox`), per crawl batch: "
    "the data version is the hash of the requests that hit one of its documents. The takedown sensor "
    "records new versions; observing here recomputes them all.",
)
def takedown_requests(context: dg.AssetExecutionContext, catalog: CatalogResource) -> dg.DataVersionsByPartition:
    batches = context.instance.get_dynamic_partitions(crawl_batches.name)
    return dg.DataVersionsByPartition(batch_versions(catalog.catalog(), batches))
