"""Lineage audits (checkpoint -> WARC records, URL -> checkpoints) and takedowns that recompute only
what they touch: plain engines over the lineage catalog and storage, no Dagster."""
