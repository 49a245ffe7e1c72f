"""Declarative automation: which condition each asset materializes under, and the sensor that
evaluates them (on the code server, where the custom conditions of jobs/conditions.py run).

Every condition has one shape: there is *work* (the partition is missing, or stale as the UI shows
it), its *inputs are ready* (see `InputsReady`; their blocking checks passed), it is not in
progress, and it has not failed since its code or inputs last changed (a failing partition is not
retried in a loop; fixing the settings or an input retries it). What differs per asset:

- per-crawl-batch stages: missing or stale; the stages of one batch whose inputs come together run
  in one run;
- deduplicated_documents: one batch at a time in registration order, and again when an earlier
  batch's index changed since it was deduplicated against it;
- corpus-wide models (quality classifier, tokenizer): missing or a changed code version, not every
  new batch (unless their settings retrain them on new data);
- checkpoint: the training policy (every N new crawl batches, on a cron, or by hand);
- evaluation, model_comparison and report: in the checkpoint's run, right behind it;
- takedown_report: when a request hits a crawl batch, and in each checkpoint's run (not for every
  batch whose outputs change on the way there, nor for a new batch no request hits: it would run
  twice per new batch).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._utils.schedules import is_valid_cron_schedule

from assets.dedup import DEDUPED
from assets.evaluate import MODEL_COMPARISON
from assets.reports import REPORT, TAKEDOWN_REPORT
from assets.takedown import TAKEDOWN_REQUESTS
from jobs.conditions import (
    EarlierBatchChanged,
    EarlierBatchesSettled,
    InputsReady,
    Stale,
    TrainingDue,
    UnchangedDuringTick,
)
from resources.common.automation import AutomationSettings, TrainingPolicy
from resources.evaluate.history import EVALUATION
from resources.lineage.takedown import NO_TAKEDOWN
from resources.train.generations import CHECKPOINT
from resources.train.mixture import TRAINING_MIXTURE

AUTOMATION_SENSOR = "automation_sensor"
When = dg.AutomationCondition


def runnable(work: dg.AutomationCondition, label: str) -> dg.AutomationCondition:
    """`work` once its inputs are ready, unless in progress or failed since its code or inputs last
    changed."""
    changed = (When.code_version_changed() | When.any_deps_updated()).since(When.newly_requested())
    failed = (When.execution_failed() & ~changed).with_label("failed_since_last_change")
    return (work & InputsReady() & ~When.in_progress() & ~failed & UnchangedDuringTick()).with_label(label)


def joins_run_of(parent: str) -> dg.AutomationCondition:
    """Requested into the same run as this input: a new checkpoint always carries new data, so what
    follows it runs right behind it instead of a tick (and a run start) later."""
    return When.any_deps_match(When.will_be_requested()).allow(dg.AssetSelection.assets(parent))


def training_condition(policy: TrainingPolicy) -> dg.AutomationCondition | None:
    """None for `manual`: the checkpoint is trained only when someone materializes it."""
    if policy.policy == "manual":
        return None
    if policy.policy == "new_batches":
        due = TrainingDue(policy.every_n_batches)
    else:
        if not is_valid_cron_schedule(policy.cron or ""):
            raise ValueError(
                f"automation.training.cron: {policy.cron!r} is not a cron schedule (five fields, e.g. '0 3 * * *')"
            )
        due = When.cron_tick_passed(policy.cron, policy.timezone).since_last_handled() & TrainingDue(1)
    return runnable(When.missing() | Stale(code_only=True) | due, f"train ({policy.describe()})")


def conditions(
    settings: AutomationSettings, models: Mapping[str, bool], takedown_outputs: Sequence[str]
) -> dict[str, dg.AutomationCondition | None]:
    """The condition of each named asset; `models` maps each corpus-wide model to whether it
    retrains on new data; `takedown_outputs`: the per-batch outputs the takedown report counts in.
    Assets not named here (added later) get `default_condition`."""
    return {
        DEDUPED: runnable(When.missing() | Stale() | EarlierBatchChanged(), "missing_or_stale_in_order")
        & EarlierBatchesSettled(),
        **{
            m: runnable(When.missing() | Stale(code_only=not new), "missing_or_code_changed")
            for m, new in models.items()
        },
        CHECKPOINT: training_condition(settings.training),
        EVALUATION: runnable(
            When.missing() | Stale(ignore=frozenset({TRAINING_MIXTURE})) | joins_run_of(CHECKPOINT),
            "follows_checkpoint",
        ),
        MODEL_COMPARISON: runnable(When.missing() | Stale() | joins_run_of(EVALUATION), "follows_evaluation"),
        REPORT: runnable(When.missing() | Stale() | joins_run_of(MODEL_COMPARISON), "follows_comparison"),
        TAKEDOWN_REPORT: runnable(
            When.missing()
            | Stale(ignore=frozenset(takedown_outputs), quiet={TAKEDOWN_REQUESTS: NO_TAKEDOWN})
            | joins_run_of(CHECKPOINT),
            "follows_requests_and_checkpoint",
        ),
    }


def default_condition() -> dg.AutomationCondition:
    return runnable(When.missing() | Stale(), "missing_or_stale")


def automate(
    assets: Sequence[dg.AssetsDefinition],
    settings: AutomationSettings,
    models: Mapping[str, bool],
    takedown_outputs: Sequence[str],
) -> Sequence[dg.AssetsDefinition]:
    """The assets with their automation conditions (see `conditions`)."""
    named, default = conditions(settings, models, takedown_outputs), default_condition()

    def with_condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(automation_condition=named.get(spec.key.to_user_string(), default))

    return dg.map_asset_specs(with_condition, assets)


def automation_sensor(settings: AutomationSettings) -> dg.AutomationConditionSensorDefinition:
    """One sensor for every asset, on the code server (custom conditions run there), running by
    default when `automation.enabled`; it can be stopped and started in the UI (Automation)."""
    with warnings.catch_warnings():  # `use_user_code_server` is beta in Dagster 1.13: said once, here
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _sensor(settings)


def _sensor(settings: AutomationSettings) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=settings.interval_seconds,
        use_user_code_server=True,
        # Runs (one per crawl batch, one for the corpus-wide assets), not backfills: the conditions
        # order the work themselves, and a run starts at once where a backfill waits for the
        # backfill daemon's next iteration (30 s).
        emit_backfills=False,
        description="Materializes missing and stale assets as their inputs become ready (jobs/automation.py).",
    )
