"""Partitions shared by every per-crawl asset."""

import dagster as dg

# One key per crawl batch (a few WARC/WET files of one crawl), registered by the crawl sensor.
crawl_batches = dg.DynamicPartitionsDefinition(name="crawl_batches")
