"""`make demo`: the shipped sample from crawl files to documents, on the project's own instance.

Runs the real sensor once (registering crawl batches as partitions), materializes each new
partition and the summary, and prints what happened and where it went. The same runs show
up in `make ui` afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dagster as dg
import polars as pl
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from assets.partitions import crawl_batches
from definitions import build_definitions
from resources.common.catalog import LineageCatalog
from resources.settings import Settings, load_settings


def tick_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorResult:
    """Evaluate the crawl sensor as the daemon would and apply its partition requests."""
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def("crawl_sensor")
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, repository_def=repository, resources=defs.resources
    ) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def materialize(
    defs: dg.Definitions, instance: dg.DagsterInstance, names: Sequence[str], partition_key: str | None = None
) -> dg.ExecuteInProcessResult:
    """Materialize the named assets of `defs` in-process, recorded in `instance`."""
    wanted = set(names)
    assets = [a for a in defs.assets or [] if {k.to_user_string() for k in a.keys} & wanted]
    return dg.materialize(
        assets,
        instance=instance,
        resources=defs.resources,
        partition_key=partition_key,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},  # the UI keeps every event
    )


# Stage by stage, so that corpus-wide assets see every crawl batch and deduplication sees the
# batches in registration order (first seen wins).
STAGES: list[tuple[str, bool]] = [  # (asset, partitioned)
    ("raw_documents", True),
    ("filtered_documents", True),
    ("quality_classifier", False),
    ("scored_documents", True),
    ("deduplicated_documents", True),
    ("rewriter_model", False),
    ("synthetic_documents", True),
    ("tokenizer", False),
    ("token_shards", True),
    ("synthetic_token_shards", True),
    ("training_mixture", False),
    ("checkpoint", False),
    ("evaluation", False),
    ("model_comparison", False),
    ("crawl_summary", False),
    ("decontamination_report", False),
    ("report", False),
]


def needs_run(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, partition: str | None) -> bool:
    """Missing or stale, as the UI shows it: fresh partitions are never recomputed."""
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(dg.AssetKey(asset), partition) != StaleStatus.FRESH


def materialize_stale(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[tuple[str, str | None]]:
    done = []
    defined = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    for asset, partitioned in [(a, p) for a, p in STAGES if a in defined]:
        keys = instance.get_dynamic_partitions(crawl_batches.name) if partitioned else [None]
        for key in keys:
            if needs_run(defs, instance, asset, key):
                materialize(defs, instance, [asset], key)
                done.append((asset, key))
    return done


def run(settings: Settings, instance: dg.DagsterInstance) -> None:
    defs = build_definitions(settings)
    started = time.perf_counter()
    tick = tick_sensor(defs, instance)
    print(f"crawl sensor: {len(tick.run_requests or [])} new crawl batches from {settings.source.url}")
    done = materialize_stale(defs, instance)
    print(f"materialized {len(done)} stale or missing asset partitions in {time.perf_counter() - started:.1f} s")
    catalog = LineageCatalog(settings.catalog.path)
    with pl.Config(tbl_rows=100, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(
            catalog.query(
                "SELECT asset, count(*) AS crawl_batches, CAST(sum(rows) AS BIGINT) AS documents FROM materializations"
                " WHERE asset LIKE '%documents' GROUP BY asset ORDER BY min(created_at)"
            )
        )
        print(catalog.query("SELECT stage, rule, count(*) AS removed FROM removed GROUP BY ALL ORDER BY ALL"))
    print(summary(defs, instance, settings))
    print(f"shards and manifests: {settings.storage.root}")
    print(f"lineage catalog (DuckDB): {settings.catalog.path}")
    print("browse it: make ui  ->  http://127.0.0.1:3000")


def summary(defs: dg.Definitions, instance: dg.DagsterInstance, settings: Settings) -> str:
    """Tokens, the checkpoint, its scores and where the report is, from the latest materializations."""

    def latest(asset: str) -> dict[str, object]:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return {}
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    lines = []
    mixture = latest("training_mixture")
    if mixture:
        sources = {name: spec for name, spec in mixture.items() if isinstance(spec, dict)}  # not the path
        tokens = ", ".join(f"{name} {spec['train_tokens']:,}" for name, spec in sources.items())
        lines.append(f"train tokens: {tokens}")
    checkpoint = latest("checkpoint")
    if checkpoint:
        lines.append(
            f"checkpoint: {checkpoint['checkpoint']}\n  step {checkpoint['step']}, "
            f"final loss {checkpoint['final_loss']}, {checkpoint['tokens_seen']:,} tokens "
            f"at {checkpoint['tokens_per_second']} tokens/s"
        )
    scores = {k.split("/", 1)[1]: v for k, v in latest("evaluation").items() if k.startswith("bits_per_byte/")}
    if scores:
        lines.append("bits per byte: " + ", ".join(f"{name} {value}" for name, value in scores.items()))
    report = latest("report")
    if report:
        lines.append(f"report: {report['html']}")
    return "\n".join(lines)


def main() -> None:
    with dg.DagsterInstance.get() as instance:
        run(load_settings(), instance)


if __name__ == "__main__":
    main()
