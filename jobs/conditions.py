"""Custom automation conditions, evaluated on the code server (`use_user_code_server=True`), for
what Dagster's built-in conditions cannot say here:

- `Stale`: stale as the UI shows it (so nothing fresh is ever recomputed), optionally counting
  only code changes (corpus-wide models) or ignoring some inputs' new data;
- `InputsReady`: every input partition this one reads is there, or cannot be made because it or
  something it needs failed (one failing crawl batch does not hold back the corpus-wide assets);
- `EarlierBatchesSettled` and `EarlierBatchChanged`: deduplication's registration order, between
  partitions of one asset, which no Dagster edge connects;
- `TrainingDue`: the checkpoint's data policy (every N new crawl batches);
- `UnchangedDuringTick`: no partition is requested twice because its run ended mid-tick.

Each is a filter over the candidate partitions it is given, with a label the UI shows in the
asset's automation evaluations.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import ClassVar

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleCauseCategory
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG

from assets.dedup import DEDUPED, EARLIER_INDEX
from assets.train import CRAWL_BATCHES
from resources.dedup.index import chain_link
from resources.train.generations import CHECKPOINT
from resources.train.mixture import TRAINING_MIXTURE, retrain_reason

Key = str | None  # a partition key, None for an unpartitioned asset
RETRY_LOOKBACK = 1000  # failed runs marked for retry looked at per tick (latest first), and assets per run


class PartitionFilter(dg.AutomationCondition):
    """True for the candidate partitions (or the unpartitioned asset) that `keep` selects."""

    label_text = ""

    @property
    def name(self) -> str:
        return self.label_text

    def get_label(self) -> str:
        return self.label_text

    async def evaluate(self, context):  # type: ignore[override]
        if context.candidate_subset.is_empty:
            return dg.AutomationResult(context, context.get_empty_subset())
        candidates = keys_of(context.candidate_subset)
        kept = set(await self.keep(context, candidates))
        if context.candidate_subset.is_partitioned:
            subset = context.candidate_subset.compute_intersection_with_partition_keys(kept - {None})
        else:
            subset = context.candidate_subset if kept else context.get_empty_subset()
        return dg.AutomationResult(context, subset)

    async def keep(self, context, candidates: list[Key]) -> list[Key]:
        raise NotImplementedError


def keys_of(subset) -> list[Key]:
    return sorted(subset.expensively_compute_partition_keys()) if subset.is_partitioned else [None]


def awaiting_retry(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Runs that failed because their process died (or was stopped) and that run retries will
    launch again, from the failed step, but have not yet."""
    failed = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"}), limit=RETRY_LOOKBACK
    )
    return [r.dagster_run for r in failed if AUTO_RETRY_RUN_ID_TAG not in r.dagster_run.tags]


class TickState:
    """What one evaluation tick knows about each asset's partitions, computed once per tick (the
    conditions of every asset share it): missing, in progress, latest execution failed, and
    blocked (missing and not makeable, see `blocked`)."""

    _by_view: ClassVar[weakref.WeakKeyDictionary] = weakref.WeakKeyDictionary()

    def __init__(self, view) -> None:
        self.view = view
        self._sets: dict[tuple[str, dg.AssetKey], set[Key]] = {}
        self._blocked: dict[dg.AssetKey, set[Key]] = {}
        self._retrying: dict[dg.AssetKey, set[Key]] | None = None
        self.resolver = CachingStaleStatusResolver(view.instance, view.asset_graph, view)  # stale status, as the UI

    @classmethod
    def of(cls, context) -> TickState:
        view = context.asset_graph_view
        if view not in cls._by_view:
            cls._by_view[view] = cls(view)
        return cls._by_view[view]

    async def _subset(self, what: str, key: dg.AssetKey) -> set[Key]:
        if (what, key) not in self._sets:
            full = self.view.get_full_subset(key=key)
            if what == "all":
                self._sets[what, key] = set(keys_of(full))
                return self._sets[what, key]
            compute = {
                "missing": self.view.compute_missing_subset,
                "running": self.view.compute_run_in_progress_subset,
                "backfilling": self.view.compute_backfill_in_progress_subset,
                "failed": self.view.compute_execution_failed_subset,
            }[what]
            subset = await compute(key=key, from_subset=full)
            self._sets[what, key] = set() if subset.is_empty else set(keys_of(subset))
        return self._sets[what, key]

    async def missing(self, key: dg.AssetKey) -> set[Key]:
        return await self._subset("missing", key)

    async def failed_checks(self, key: dg.AssetKey) -> set[Key]:
        """Partitions whose latest materialization failed a blocking check: bad data, which nothing
        after it may use until it is materialized again."""
        from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus

        if ("checks", key) not in self._sets:
            graph, failed = self.view.asset_graph, set()
            for check in graph.get_check_keys_for_assets({key}):
                if graph.get(check).blocking:
                    subset = await self.view.compute_subset_with_status(
                        key=check,
                        status=AssetCheckExecutionResolvedStatus.FAILED,
                        from_subset=self.view.get_full_subset(key=check),
                    )
                    failed |= set() if subset.is_empty else set(keys_of(subset))
            self._sets["checks", key] = failed
        return self._sets["checks", key]

    async def materialized_any(self, key: dg.AssetKey) -> bool:
        return bool(await self._subset("all", key) - await self.missing(key))

    async def in_progress(self, key: dg.AssetKey) -> set[Key]:
        return await self._subset("running", key) | await self._subset("backfilling", key)

    def retrying(self, key: dg.AssetKey) -> set[Key]:
        """Partitions whose latest run died (killed, out of memory) and that run retries will launch
        again: about to be made, not failed."""
        if self._retrying is None:
            self._retrying = {}
            instance = self.view.instance
            for run in awaiting_retry(instance):
                planned = instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=RETRY_LOOKBACK
                ).records
                for event in (record.event_log_entry.dagster_event for record in planned):
                    self._retrying.setdefault(event.asset_key, set()).add(event.partition)
        return self._retrying.get(key, set())

    async def blocked(self, key: dg.AssetKey) -> set[Key]:
        """Missing partitions that automation cannot make: their latest run failed (and will not be
        retried), or an input partition they need is itself blocked (a deduplicated batch also needs
        every earlier batch). They do not hold back the assets that read every partition: a
        failing crawl batch is left out of the corpus until it is fixed."""
        if key not in self._blocked:
            missing = await self.missing(key) - await self.in_progress(key)
            blocked = missing & await self._subset("failed", key) - self.retrying(key)
            graph = self.view.asset_graph
            node = graph.get(key)
            for parent in node.parent_keys:
                parent_blocked = await self.blocked(parent)
                if not parent_blocked:
                    continue
                if graph.get(parent).partitions_def is None:
                    blocked |= missing  # an unpartitioned input that cannot be made blocks every partition
                elif node.partitions_def is not None:
                    blocked |= missing & parent_blocked
            if key.to_user_string() == DEDUPED and blocked:
                order = node.partitions_def.get_partition_keys(dynamic_partitions_store=self.view.instance)
                first = min(order.index(k) for k in blocked)
                blocked |= missing & set(order[first:])
            self._blocked[key] = blocked
        return self._blocked[key]


class Stale(PartitionFilter):
    """Stale as the UI shows it (`CachingStaleStatusResolver`): its own code version changed, or an
    input's data version changed. `code_only`: only its own code version or its dependencies
    changed (models kept when only data is new). `ignore`: inputs whose new data does not count.
    `quiet`: input -> a data version that does not count either (a new crawl batch's takedown
    requests at "no request hits it")."""

    def __init__(
        self, *, code_only: bool = False, ignore: frozenset[str] = frozenset(), quiet: Mapping[str, str] | None = None
    ) -> None:
        self.code_only, self.ignore, self.quiet = code_only, ignore, dict(quiet or {})
        self.label_text = "code_changed" if code_only else "stale"
        if ignore:
            self.label_text += f" (new {', '.join(sorted(ignore))} ignored)"

    @property
    def description(self) -> str:
        return "its code version or dependencies changed" if self.code_only else "stale, as the UI shows it"

    async def keep(self, context, candidates):
        resolver = TickState.of(context).resolver
        return [
            key
            for key in candidates
            if any(self._counts(cause, resolver) for cause in resolver.get_stale_causes(context.key, key))
        ]

    def _counts(self, cause, resolver: CachingStaleStatusResolver) -> bool:
        if cause.category != StaleCauseCategory.DATA:
            return True  # its own code version, or a dependency added or removed
        if self.code_only:
            return False
        dependency = cause.dependency
        if dependency is None:
            return True
        name = dependency.asset_key.to_user_string()
        if name in self.ignore:
            return False
        quiet = self.quiet.get(name)
        if quiet is None:
            return True
        return resolver.get_current_data_version(dependency.asset_key, dependency.partition_key).value != quiet


class InputsReady(PartitionFilter):
    """Every input partition it reads is materialized and passed its blocking checks, or is
    requested into the same run (which skips this asset if a check fails there), and none is in
    progress; an asset that reads every partition of an input waits for at least one (a crawl
    batch registered, ingested, ...) and leaves out the blocked ones (see `TickState.blocked`),
    while a partition whose own input partition is blocked waits with it (it could only fail). Dagster's own
    `all_deps_blocking_checks_passed` would keep a stage out of its input's run: the input's checks
    are not requested before the stage is evaluated."""

    label_text = "inputs_ready"

    @property
    def description(self) -> str:
        return (
            "no input is missing (unless it runs in the same run or cannot be made), failed a check or is in progress"
        )

    async def keep(self, context, candidates):
        state, graph = TickState.of(context), context.asset_graph
        node = graph.get(context.key)
        ready = set(candidates)
        for parent in node.parent_keys:
            parent_node = graph.get(parent)
            if not parent_node.is_materializable:
                continue  # an observed source: whatever it last reported is what there is
            fan_in = node.partitions_def is None and parent_node.partitions_def is not None
            if fan_in and not await state.materialized_any(parent):
                return []
            missing = await state.missing(parent)
            if fan_in:  # a blocked input partition is left out of what reads them all
                missing -= await state.blocked(parent)
            waiting = missing | await state.in_progress(parent) | await state.failed_checks(parent)
            if not waiting:
                continue
            same_run = parent_node.partitions_def == node.partitions_def
            requested = context.request_subsets_by_key.get(parent)
            if same_run and requested is not None and not requested.is_empty:
                waiting -= set(keys_of(requested))
            if not waiting:
                continue
            if node.partitions_def is not None and parent_node.partitions_def is not None:
                ready -= waiting  # partition to partition (crawl batches map one to one)
            else:
                ready = set()  # reads all of the input (or the unpartitioned input itself)
        return [key for key in candidates if key in ready]


class UnchangedDuringTick(PartitionFilter):
    """Nothing about it was recorded while this tick was evaluated. A tick sees materializations as
    of its start but runs as they are now: a run that ends during a long tick would otherwise look
    neither materialized nor in progress, and its partition would be requested a second time."""

    label_text = "unchanged_during_tick"

    @property
    def description(self) -> str:
        return "no materialization or failure of it was recorded while this tick was evaluated"

    async def keep(self, context, candidates):
        view = context.asset_graph_view
        if view.last_event_id is None:
            return candidates
        instance, since = view.instance, dg.AssetRecordsFilter(context.key, after_storage_id=view.last_event_id)
        touched = {
            record.partition_key
            for fetch in (instance.fetch_materializations, instance.fetch_failed_materializations)
            for record in fetch(since, limit=10_000).records
        }
        return [key for key in candidates if key not in touched]


async def _latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dg.EventLogRecord]:
    """The latest materialization record of every partition of `key`, in two queries."""
    ids = instance.event_log_storage.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION)
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(key, storage_ids=list(ids.values())), limit=len(ids)
    )
    return {r.partition_key: r for r in records.records if r.partition_key is not None}


def _registered(context) -> list[str]:
    return context.partitions_def.get_partition_keys(dynamic_partitions_store=context.asset_graph_view.instance)


class EarlierBatchChanged(PartitionFilter):
    """A deduplicated batch whose earlier batches' index segments are not the ones it was
    deduplicated against (an earlier batch was rematerialized with different content): what it
    removed may be wrong, so it must run again although Dagster sees no changed input."""

    label_text = "earlier_batch_changed"

    @property
    def description(self) -> str:
        return "an earlier crawl batch's dedup index changed since this batch was deduplicated against it"

    async def keep(self, context, candidates):
        latest = await _latest_materializations(context.asset_graph_view.instance, context.key)
        changed, expected = [], None  # the chain value of the batches so far, as they are now
        for key in _registered(context):
            record = latest.get(key)
            if record is None:
                break  # no later batch can have been deduplicated without this one
            recorded = record.asset_materialization.metadata.get(EARLIER_INDEX)
            if key in candidates and None not in (recorded, expected) and recorded.value != expected:
                changed.append(key)
            version = record.asset_materialization.tags.get("dagster/data_version", "")
            expected = chain_link(recorded.value, key, version) if recorded is not None else None
        return changed


class EarlierBatchesSettled(PartitionFilter):
    """Deduplication's registration order: a batch runs only when every batch registered before it
    is deduplicated, not in progress and not about to run. So at most the earliest waiting batch is
    requested per tick, and automation never deduplicates two batches at once."""

    label_text = "earlier_batches_settled"

    @property
    def description(self) -> str:
        return "every crawl batch registered before this one is deduplicated and none is running"

    async def keep(self, context, candidates):
        state = TickState.of(context)
        unsettled = await state.missing(context.key) | await state.in_progress(context.key)
        for key in _registered(context):
            if key in candidates:
                return [key]  # this one runs: every later batch waits for it
            if key in unsettled:
                return []
        return []


class TrainingDue(PartitionFilter):
    """The checkpoint's data policy: retrain once `every_n` crawl batches are new since the latest
    checkpoint was trained, or at once when batches it was trained on changed (a takedown, a
    changed filter). Compares the `crawl_batches` the mixture and the checkpoint recorded."""

    def __init__(self, every_n: int) -> None:
        self.every_n = every_n
        self.label_text = f"training_due (every {every_n} new crawl batches, or changed ones)"

    @property
    def description(self) -> str:
        return f"{self.every_n} crawl batches are new since the latest checkpoint, or batches it saw changed"

    async def keep(self, context, candidates):
        instance = context.asset_graph_view.instance
        current, trained = (_recorded_batches(instance, name) for name in (TRAINING_MIXTURE, CHECKPOINT))
        if current is None or trained is None:
            return []  # no mixture yet, or no checkpoint yet (then `missing` decides)
        return candidates if retrain_reason(trained, current, self.every_n) else []


def _recorded_batches(instance: dg.DagsterInstance, asset: str) -> Mapping[str, str] | None:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    entry = event and event.asset_materialization and event.asset_materialization.metadata.get(CRAWL_BATCHES)
    return entry.value if entry else None
