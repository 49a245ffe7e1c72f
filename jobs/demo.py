"""`make demo`: the shipped sample from crawl files to an evaluated checkpoint, through Dagster's own
machinery: the real daemon on the project's instance, the crawl sensor registering the sample's
crawl batches, the automation sensor materializing whatever is missing or stale (jobs/automation.py).
There is no stage list here: this process only starts the daemon, shows what happens, and stops it
once nothing is left to run, then prints the summary.

The daemon (and the runs it launches, vLLM included) write to `$DAGSTER_HOME/daemon.log`;
each run's own output stays in its compute logs, shown in the UI (`make ui`). A failing asset
partition does not stop the others: the demo names it, says where its logs are, waits until
nothing else can run, and exits with 1. Run it again and it materializes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import dagster as dg
import polars as pl
import sqlalchemy.exc
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorTick, InstigatorType, TickStatus
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.tags import PARTITION_NAME_TAG, WILL_RETRY_TAG

from jobs.automation import AUTOMATION_SENSOR
from jobs.conditions import awaiting_retry
from resources.common.catalog import LineageCatalog
from resources.settings import PROJECT_ROOT, Settings, load_settings

SENSORS = ("crawl_sensor", AUTOMATION_SENSOR)
REPORTED_EVENTS = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.STEP_FAILURE}
STEP_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
POLL_S = 1.0
QUIET_LINE_EVERY_S = 30.0  # without a terminal: a status line this often
STOP_TIMEOUT_S = 15.0


def daemon_log(home: Path) -> Path:
    """Not under `<home>/logs/`: that is Dagster's telemetry cache, which every daemon (telemetry
    off or not) renames to `.logs_queue/`, tries to upload and deletes, our log with it."""
    return home / "daemon.log"


@contextlib.contextmanager
def daemon(home: Path, config: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` on the project's workspace in its own process group (its code server
    and runs included), output to `daemon_log(home)`; the whole group is ended on exit.
    `config`: the settings file (default: `$CRAWL2CKPT_CONFIG`, else configs/demo.yaml)."""
    log = daemon_log(home)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(PROJECT_ROOT)}
    if config is not None:
        env["CRAWL2CKPT_CONFIG"] = str(config)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group, SIGKILL after `STOP_TIMEOUT_S` (the daemon may ignore SIGTERM a while)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def sensor_states(instance: dg.DagsterInstance, names: Sequence[str] = SENSORS) -> dict[str, object]:
    return {
        state.instigator_name: state
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if state.instigator_name in names
    }


def start_stopped_sensors(instance: dg.DagsterInstance) -> list[str]:
    """The demo needs both sensors: one stopped in the UI is started again (and said so)."""
    started = []
    for name, state in sensor_states(instance).items():
        if state.status == InstigatorStatus.STOPPED:
            instance.update_instigator_state(state.with_status(InstigatorStatus.RUNNING))
            started.append(name)
    return started


@dataclass
class Failure:
    asset: str
    partition: str | None
    run_id: str
    message: str
    logs: str
    at: float

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]" if self.partition else self.asset


@dataclass
class Progress:
    """What the demo has seen since it started: materializations, failures, and the moment of the
    last activity (a run ending), after which an automation tick that requests nothing means that
    nothing is left to run."""

    instance: dg.DagsterInstance
    started: float = field(default_factory=time.time)
    cursors: dict[str, str | None] = field(default_factory=dict)  # run id -> event cursor
    finished: set[str] = field(default_factory=set)
    materialized: dict[str, float] = field(default_factory=dict)  # asset partition -> when, latest
    count: int = 0
    failures: list[Failure] = field(default_factory=list)
    last_activity: float = field(default_factory=time.time)
    # Sensors that bring work from outside (new crawl files, takedown requests): each must have
    # looked once since the start before the demo may call the chain idle.
    sources: tuple[str, ...] = ("crawl_sensor",)

    def elapsed(self) -> str:
        seconds = int(time.time() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def runs(self) -> list[dg.RunRecord]:
        return [r for r in self.instance.get_run_records() if r.create_timestamp.timestamp() >= self.started - 1]

    def in_flight(self) -> list[dg.RunRecord]:
        return list(self.instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)))

    def update(self, say: Callable[[str], None]) -> None:
        """Report what the demo's runs materialized or failed since the last call."""
        for record in reversed(self.runs()):
            run = record.dagster_run
            if run.run_id in self.finished:
                continue
            connection = self.instance.get_records_for_run(
                run.run_id, cursor=self.cursors.get(run.run_id), of_type=REPORTED_EVENTS
            )
            self.cursors[run.run_id] = connection.cursor
            for event in (r.event_log_entry for r in connection.records):
                if event.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                    materialization = event.asset_materialization
                    name = materialization.asset_key.to_user_string()
                    label = f"{name}[{materialization.partition}]" if materialization.partition else name
                    self.materialized[label] = event.timestamp
                    self.count += 1
                    say(f"done    {label}")
                else:
                    failure = self.failure(run, event)
                    self.failures.append(failure)
                    say(f"FAILED  {failure.label}: {failure.message}\n        logs: {failure.logs}")
            if run.is_finished:
                self.finished.add(run.run_id)
                self.last_activity = max(self.last_activity, record.end_time or time.time())
                if run.status == dg.DagsterRunStatus.FAILURE and not any(f.run_id == run.run_id for f in self.failures):
                    retry = " (it will be retried)" if run.tags.get(WILL_RETRY_TAG) == "true" else ""
                    say(f"FAILED  run {run.run_id} ({_targets(run)}): {_run_failure(self.instance, run.run_id)}{retry}")

    def failure(self, run: dg.DagsterRun, event: dg.EventLogEntry) -> Failure:
        error = event.dagster_event.step_failure_data.error
        while error is not None and error.cause is not None:  # the user's error under Dagster's wrapper
            error = error.cause
        message = (error.message.strip().splitlines() or [""])[-1] if error else "failed"
        partition = run.tags.get(PARTITION_NAME_TAG)
        logs = logs_of(self.instance, run.run_id)
        return Failure(event.dagster_event.step_key, partition, run.run_id, message, logs, event.timestamp)

    def unresolved(self) -> list[Failure]:
        """Failures not made good by a later materialization of the same asset partition."""
        return [f for f in self.failures if self.materialized.get(f.label, 0.0) < f.at]

    def status_line(self) -> str:
        flight = self.in_flight()
        running = [self.step_of(r.dagster_run) for r in flight if r.dagster_run.status == dg.DagsterRunStatus.STARTED]
        waiting = len(flight) - len(running)
        return (
            f"{self.elapsed()}  running: {', '.join(running) or '-'}  starting or queued: {waiting}  "
            f"materialized: {self.count}  failed: {len(self.failures)}"
        )

    def step_of(self, run: dg.DagsterRun) -> str:
        """The asset partition a started run is materializing now."""
        steps = self.instance.get_records_for_run(run.run_id, of_type=STEP_EVENTS, ascending=False, limit=1).records
        event = steps[0].event_log_entry.dagster_event if steps else None
        if event is None or event.event_type != dg.DagsterEventType.STEP_START:
            return f"({_targets(run)})"  # between steps
        partition = run.tags.get(PARTITION_NAME_TAG)
        return f"{event.step_key}[{partition}]" if partition else event.step_key


def _targets(run: dg.DagsterRun) -> str:
    names = ",".join(sorted(k.to_user_string() for k in run.asset_selection or []))
    partition = run.tags.get(PARTITION_NAME_TAG)
    return f"{names}[{partition}]" if partition else names


def _run_failure(instance: dg.DagsterInstance, run_id: str) -> str:
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return event.message or "run failed"
    return "run failed"


def logs_of(instance: dg.DagsterInstance, run_id: str) -> str:
    """Where a run's output is: the captured stdout/stderr files, and the run's page in the UI."""
    ui = f"`make ui` -> http://127.0.0.1:3000/runs/{run_id}"
    manager = instance.compute_log_manager
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED):
        data = event.dagster_event.logs_captured_data
        if hasattr(manager, "get_captured_local_path"):
            err = manager.get_captured_local_path([run_id, "compute_logs", data.file_key], "err")
            return f"{err} (and .out), or {ui}"
    return ui


def automation_idle_since(instance: dg.DagsterInstance, moment: float) -> bool | str:
    """True when the latest automation tick that started after `moment` and has ended requested
    nothing; the tick's error when it failed (a broken condition: nothing will ever run)."""
    state = sensor_states(instance).get(AUTOMATION_SENSOR)
    if state is None:
        return False
    return idle_after(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=5), moment)


def idle_after(ticks: Sequence[InstigatorTick], moment: float) -> bool | str:
    """`ticks` newest first: one that requested runs after a skipped one means work, not idleness."""
    for tick in ticks:
        if tick.timestamp <= moment:
            return False
        if tick.status == TickStatus.STARTED:
            continue  # still evaluating
        if tick.status == TickStatus.FAILURE:
            return tick.error.to_string() if tick.error else "automation tick failed"
        return tick.status == TickStatus.SKIPPED
    return False


def sensors_looked_since(instance: dg.DagsterInstance, moment: float, names: Sequence[str]) -> float | None:
    """When the last of the sensors `names` (those not stopped in the UI) ended its latest tick, if
    each has ended one that started after `moment`; None while one has not."""
    states = sensor_states(instance, names)
    latest = moment
    for name in names:
        state = states.get(name)
        if state is not None and state.status == InstigatorStatus.STOPPED:
            continue
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1) if state else []
        if not ticks or ticks[0].timestamp <= moment or ticks[0].status == TickStatus.STARTED:
            return None
        latest = max(latest, ticks[0].end_timestamp or ticks[0].timestamp)
    return latest


def retry_pending(instance: dg.DagsterInstance) -> bool:
    """A run failed because its process died (or was stopped) and run retries will launch it again
    (a run of an earlier, interrupted demo included)."""
    return bool(awaiting_retry(instance))


def nothing_left(instance: dg.DagsterInstance, progress: Progress) -> bool | str:
    """True once no run is in flight or waiting for a retry, the source sensors have looked (new
    crawl files, takedown requests), and an automation tick after the last run ended and after
    their look requested nothing; why nothing more will happen when the automation sensor fails."""
    looked = sensors_looked_since(instance, progress.started, progress.sources)
    if progress.in_flight() or retry_pending(instance) or looked is None:
        return False
    # Runs read after the check above: one that ended since `progress.update` looked counts too.
    ended = max([progress.last_activity, looked, *(record.end_time or 0.0 for record in progress.runs())])
    idle = automation_idle_since(instance, ended)
    return f"the automation sensor failed:\n{idle}" if isinstance(idle, str) else idle


def look(instance: dg.DagsterInstance, progress: Progress, say: Callable[[str], None]) -> bool | str:
    """Report what the runs did since the last look; then `nothing_left`."""
    progress.update(say)
    return nothing_left(instance, progress)


T = TypeVar("T")


def patiently(read: Callable[[], T], patience_s: float = 120.0) -> T:
    """`read()` of the instance, again while SQLite says "database is locked": on a loaded machine
    a daemon's write can outlast a reader's busy timeout, which is no reason for a watcher to die.
    Any other error, or a lock longer than `patience_s`, is raised."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return read()
        except sqlalchemy.exc.OperationalError as error:
            if "database is locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(POLL_S)


def watch(instance: dg.DagsterInstance, process: subprocess.Popen[bytes], progress: Progress) -> str | None:
    """Show progress until nothing is left to run; returns why the demo cannot go on, if so."""
    tty = sys.stdout.isatty()
    last_line = 0.0

    def say(text: str) -> None:
        if tty:
            sys.stdout.write("\r\033[K")
        print(f"{progress.elapsed()}  {text}", flush=True)

    while True:
        if process.poll() is not None:
            return f"dagster-daemon exited with {process.returncode} (see its log)"
        done = patiently(partial(look, instance, progress, say))
        if isinstance(done, str):
            return done
        if done:
            if tty:
                sys.stdout.write("\r\033[K")
            return None
        now = time.time()
        if tty:
            sys.stdout.write("\r\033[K" + progress.status_line()[: os.get_terminal_size().columns - 1])
            sys.stdout.flush()
        elif now - last_line >= QUIET_LINE_EVERY_S:
            print(progress.status_line(), flush=True)
            last_line = now
        time.sleep(POLL_S)


def summary(instance: dg.DagsterInstance) -> str:
    """Tokens, the checkpoint, its scores and where the report is, from the latest materializations."""

    def latest(asset: str) -> dict[str, object]:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return {}
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    lines = []
    # the mixture's metadata: one entry per source, besides its path and crawl batches
    sources = {k: v for k, v in latest("training_mixture").items() if isinstance(v, dict) and "train_tokens" in v}
    if sources:
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


def catalog_tables(settings: Settings) -> str:
    """Documents per stage and removals per rule, from the lineage catalog."""
    catalog = LineageCatalog(settings.catalog.path)
    with pl.Config(tbl_rows=100, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        documents = catalog.query(
            "SELECT asset, count(*) AS crawl_batches, CAST(sum(rows) AS BIGINT) AS documents FROM materializations"
            " WHERE asset LIKE '%documents' GROUP BY asset ORDER BY min(created_at)"
        )
        removed = catalog.query("SELECT stage, rule, count(*) AS removed FROM removed GROUP BY ALL ORDER BY ALL")
        return f"{documents}\n{removed}"


def run(settings: Settings, instance: dg.DagsterInstance, home: Path, config: str) -> int:
    if not settings.automation.enabled:
        print(f"automation is off in {config} (automation.enabled): the demo needs it on", file=sys.stderr)
        return 2
    for name in start_stopped_sensors(instance):
        print(f"{name} was stopped (in the UI): started it again")
    print(f"dagster-daemon on {config}; its log: {daemon_log(home)}", flush=True)
    sources = ("crawl_sensor", *(["takedown_sensor"] if settings.takedown.sensor_running else []))
    progress = Progress(instance, sources=sources)
    with daemon(home) as process:
        problem = watch(instance, process, progress)
    print(f"materialized {progress.count} asset partitions in {progress.elapsed()}")
    if progress.count or not problem:
        print(catalog_tables(settings))
        print(summary(instance))
        print(f"shards and manifests: {settings.storage.root}")
        print(f"lineage catalog (DuckDB): {settings.catalog.path}")
        print("browse it: make ui  ->  http://127.0.0.1:3000")
    failures = progress.unresolved()
    for failure in failures:
        print(
            f"FAILED: {failure.label} (run {failure.run_id}): {failure.message}\n  logs: {failure.logs}",
            file=sys.stderr,
        )
    if problem:
        print(f"stopped: {problem}", file=sys.stderr)
    return 1 if failures or problem else 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `daemon()`, which stops the daemon's process group


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home")
    os.environ["DAGSTER_HOME"] = str(home)
    config = os.environ.get("CRAWL2CKPT_CONFIG") or "configs/demo.yaml"
    with dg.DagsterInstance.get() as instance:
        sys.exit(run(load_settings(), instance, home, config))


if __name__ == "__main__":
    main()
