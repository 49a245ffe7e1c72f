"""Chaos: the whole chain under the real daemon, its runs SIGKILLed at chosen points, and what the
recovery leaves behind checked against an uninterrupted run.

Each pass starts from a fresh storage root, catalog and DAGSTER_HOME (the project's dagster.yaml:
run monitoring, run retries, the `gpu` pool) and runs `dagster-daemon` on a small config: one crawl
batch, the tiny random-weight rewriting model served by one vLLM server for the whole benchmark
(the killed runs are its clients; `--rewrite-backend vllm` puts the engine inside the run, where
the kill takes it down too), a few training steps. The first pass is the reference. For each kill
point the bench waits until the point's asset starts a step (STEP_START in the instance's event
log), waits a fraction of that step's duration in the reference, and SIGKILLs the run worker with
every process under it (the default run launcher starts workers in the daemon's process group,
so the group itself cannot be killed without the daemon). Then nothing is done by hand: run
monitoring must mark the run failed and free its pool slots, run retries and the automation
sensor must finish the chain. A point survives when:

- every manifest names only files that exist, with matching sha256, and nothing else (no orphan)
  sits beside it; no temporary file (`.tmp-*`, `.part-*`) is left in the storage tree;
- the final outputs equal the reference's: rows per asset partition and table, token counts,
  the hashes of the models' weights and of the token ids, bits per byte per eval set;
- the killed run is marked FAILURE in the instance, and the `gpu` pool holds no claim;
- no later run waited on the killed worker's partition lock (waits on a live one are counted);
- no other run failed, and the chain finished within `--timeout` (a hang is a failure).

    .venv/bin/python bench/chaos.py                 # the reference + every kill point
    .venv/bin/python bench/chaos.py --points 3      # the first 3 of a spread over the stages
    .venv/bin/python bench/chaos.py --points raw_documents@0 checkpoint@50 --keep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script: the repository root in place of bench/ (the script's directory), which holds
# scripts, one named like a standard module (tokenize.py) that would shadow it for every import.
if Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

import dagster as dg  # noqa: E402
import yaml  # noqa: E402
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES  # noqa: E402
from dagster._core.storage.tags import PARENT_RUN_ID_TAG  # noqa: E402

from jobs.demo import Progress, daemon, look, patiently  # noqa: E402
from jobs.run_launcher import worker_process  # noqa: E402
from resources.common.partition_lock import LOCKS_DIR  # noqa: E402
from resources.common.storage import MANIFEST_NAME, TMP_PREFIX, ShardStore, sha256_bytes  # noqa: E402
from resources.llm.tiny_model import build_tiny_model  # noqa: E402
from resources.llm.vllm_server import vllm_server  # noqa: E402
from resources.settings import PROJECT_ROOT  # noqa: E402
from tests.conftest import one_file_crawl  # noqa: E402
from tests.e2e.dagster_dev import demo_config  # noqa: E402

GPU_POOL = "gpu"
TEMPORARY_PREFIXES = (TMP_PREFIX, ".part-")  # ShardStore's atomic writes and local mirrors
LOCK_WAIT = "which is writing it"  # what a step waiting for a partition lock logs (partition_lock)
SERVER_MAX_MODEL_LEN = 512
SERVER_MEMORY_SHARE = 0.15
POLL_S = 0.1
# Files whose bytes hold no path or time, so they must be identical across passes: model weights
# and token ids. (Parquet rows carry their crawl file's path, and trainer_state.pt its folders.)
CONTENT_ONLY = (".safetensors", ".bin")


@dataclass(frozen=True)
class KillPoint:
    """Kill the run materializing `asset` once its step has run `percent`% of the reference's
    duration of that step."""

    asset: str
    percent: int = 0

    @property
    def name(self) -> str:
        return f"{self.asset}@{self.percent}"

    @classmethod
    def parse(cls, name: str) -> KillPoint:
        asset, _, percent = name.partition("@")
        return cls(asset, int(percent or 0))


# Spread over every stage: each asset at its step's start, the longer ones also inside their work.
KILL_POINTS = tuple(
    KillPoint.parse(name)
    for name in (
        "raw_documents@0",
        "deduplicated_documents@50",
        "checkpoint@50",
        "filtered_documents@0",
        "quality_classifier@50",
        "scored_documents@30",
        "synthetic_documents@50",
        "tokenizer@50",
        "token_shards@30",
        "evaluation@50",
        "report@0",
        "raw_documents@60",
        "filtered_documents@60",
        "quality_classifier@0",
        "deduplicated_documents@0",
        "rewriter_model@30",
        "synthetic_documents@0",
        "synthetic_token_shards@30",
        "training_mixture@0",
        "checkpoint@0",
        "checkpoint@90",
        "evaluation@0",
        "model_comparison@0",
        "crawl_summary@0",
    )
)


def chaos_config(work: Path, endpoint: str | None, served_model: Path | None) -> Path:
    """The end-to-end tests' small demo config (tests/e2e/dagster_dev.py) with the tiny rewriting
    model (also the evaluation's reference model); rewriting through `endpoint` when given, else a
    vLLM engine inside the run."""
    crawl = one_file_crawl(work)
    config = demo_config(work, crawl, endpoint or "", served_model or Path())
    raw = yaml.safe_load(config.read_text())
    raw["rewrite"]["model"] = {"source": "tiny"}
    raw["evaluation"]["reference"] = {"max_tokens_per_set": 4000}  # the tiny model, after its own EOS
    # Random weights never stop by themselves: keep cut-off rewrites, so that synthetic rows (and
    # their token shards) are compared too, not only removals.
    raw["rewrite"]["post_filter"] = {**(raw["rewrite"].get("post_filter") or {}), "drop_truncated": False}
    if endpoint is None:
        raw["rewrite"]["backend"] = "vllm"
        raw["rewrite"].pop("endpoint")
    config.write_text(yaml.safe_dump(raw))
    return config


@dataclass
class Kill:
    run_id: str
    pid: int
    processes: list[int]
    landed: str  # the step running when the kill came, "(between steps)" or "(run had ended)"
    at: float


@dataclass
class ChainRun:
    """One pass: its DAGSTER_HOME, storage root, how long it took, the kill (if any), why it did
    not finish (if so), and each step's duration."""

    home: Path
    store: Path
    seconds: float
    kill: Kill | None
    problem: str | None
    durations: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def open_home(home: Path) -> Iterator[dg.DagsterInstance]:
    """The instance in `home`; its dagster.yaml reads `$DAGSTER_HOME`, set meanwhile."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def run_chain(
    work: Path,
    config: Path,
    point: KillPoint | None = None,
    reference: ChainRun | None = None,
    timeout_s: float = 1200.0,
    say: Callable[[str], None] = print,
) -> ChainRun:
    """The daemon on `config` until nothing is left to run, with `point`'s kill on the way."""
    started = time.monotonic()
    deadline = started + timeout_s
    home = work / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    with open_home(home) as instance:
        progress = Progress(instance)
        with daemon(home, config) as process:
            kill = None
            if point is not None:
                delay = (reference.durations.get(point.asset, 0.0) if reference else 0.0) * point.percent / 100
                kill = kill_at(instance, point, delay, deadline)
                say(f"  killed {point.name}: run {kill.run_id[:8]} in {kill.landed}, processes {kill.processes}")
            problem = wait_until_done(instance, process, progress, deadline, say)
        durations = step_durations(instance)
    store = Path(yaml.safe_load(config.read_text())["storage"]["root"])
    return ChainRun(home, store, time.monotonic() - started, kill, problem, durations)


def kill_at(instance: dg.DagsterInstance, point: KillPoint, delay_s: float, deadline: float) -> Kill:
    """Wait for the first STEP_START of `point.asset`, then `delay_s`, then SIGKILL the run's worker
    and every process under it (the default run launcher starts workers in the daemon's process
    group, so killing the group would take the daemon down too)."""
    while time.monotonic() < deadline:
        run_id = patiently(partial(run_in_step, instance, point.asset))
        if run_id is not None:
            time.sleep(delay_s)
            worker = patiently(partial(worker_process, instance, run_id))
            if worker is None:
                raise RuntimeError(f"run {run_id} reported no worker process id")
            processes = stop_tree(worker[0])
            landed = patiently(partial(running_step, instance, run_id))  # stopped: the log is what it was doing
            for pid in processes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return Kill(run_id, worker[0], processes, landed, time.time())
        time.sleep(POLL_S)
    raise TimeoutError(f"{point.asset} never started a step")


def run_in_step(instance: dg.DagsterInstance, step: str) -> str | None:
    """The started run that has started `step`, if one has."""
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        run_id = record.dagster_run.run_id
        starts = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
        if any(r.event_log_entry.dagster_event.step_key == step for r in starts):
            return run_id
    return None


RUN_ENDED = "(run had ended)"


def running_step(instance: dg.DagsterInstance, run_id: str) -> str:
    run = instance.get_run_by_id(run_id)
    if run is None or run.is_finished:
        return RUN_ENDED
    steps = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}, ascending=False, limit=1
    ).records
    event = steps[0].event_log_entry.dagster_event if steps else None
    if event is None or event.event_type != dg.DagsterEventType.STEP_START:
        return "(between steps)"
    return event.step_key


def stop_tree(pid: int) -> list[int]:
    """SIGSTOP `pid` and its descendants (again for any forked meanwhile): frozen, none can start a
    new child or write another event before the SIGKILL."""
    stopped: list[int] = []
    tree = [pid, *descendants(pid)]
    while set(tree) - set(stopped):
        for each in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGSTOP)
        stopped = tree
        tree = [pid, *descendants(pid)]
    return stopped


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            children[int(stat.read_text().rsplit(")", 1)[1].split()[1])].append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def wait_until_done(
    instance: dg.DagsterInstance, process, progress: Progress, deadline: float, say: Callable[[str], None]
) -> str | None:
    """Until nothing is left to run (as `make demo` decides); why not, if it does not come to that."""

    def report(line: str) -> None:
        if line.startswith("FAILED"):
            say(f"  {line}")

    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"dagster-daemon exited with {process.returncode}"
        done = patiently(partial(look, instance, progress, report))
        if done:
            return done if isinstance(done, str) else None
        time.sleep(1.0)
    claims = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return (
        f"not finished in time (a hang): {progress.status_line()}; gpu pool claimed by "
        f"{[slot.run_id[:8] for slot in claims.claimed_slots]}, waiting: {len(claims.pending_steps)}"
    )


def step_durations(instance: dg.DagsterInstance) -> dict[str, float]:
    """Seconds from each step's start to its success, the longest per step key."""
    durations: dict[str, float] = {}
    for record in instance.get_run_records():
        started: dict[str, float] = {}
        for event in instance.all_logs(
            record.dagster_run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
        ):
            key = event.dagster_event.step_key
            if event.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                started[key] = event.timestamp
            elif key in started:
                durations[key] = max(durations.get(key, 0.0), event.timestamp - started[key])
    return durations


# -- what a pass leaves behind -------------------------------------------------------------------
def manifest_problems(root: Path) -> list[str]:
    """Files a manifest names that are missing or differ from their sha256; files beside a manifest
    that it does not name; temporary files anywhere in the tree."""
    problems = []
    for manifest in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
        body = json.loads(manifest.read_text())
        where = manifest.parent.relative_to(root)
        for info in body["files"]:
            path = manifest.parent / info["path"]
            if not path.is_file():
                problems.append(f"{where}: names a missing file {info['path']}")
            elif sha256_bytes(path.read_bytes()) != info["sha256"]:
                problems.append(f"{where}: {info['path']} does not match its sha256")
        named = {info["path"].split("/", 1)[0] for info in body["files"]} | {MANIFEST_NAME}
        problems += [f"{where}: orphan {p.name}" for p in manifest.parent.iterdir() if p.name not in named]
    for path in root.rglob("*"):
        if path.name.startswith(TEMPORARY_PREFIXES) and LOCKS_DIR not in path.parts:
            problems.append(f"temporary file left: {path.relative_to(root)}")
    return problems


def outputs(root: Path, instance: dg.DagsterInstance) -> dict[str, object]:
    """What must equal the reference: rows per asset partition and table, token counts, the hashes
    of the models (checkpoint, rewriter, quality classifier) and of the token ids, bits per byte."""
    found: dict[str, object] = {}
    for manifest in ShardStore(str(root)).iter_manifests():
        label = f"{manifest.asset}[{manifest.partition}]"
        for table in sorted(manifest.tables()):
            if any(f.rows for f in manifest.files if f.table == table):
                found[f"rows {label} {table}"] = manifest.rows_of(table)
        for key, value in sorted(manifest.stats.items()):
            if "token" in key and isinstance(value, int) and "per_second" not in key:
                found[f"{key} {label}"] = value
        for info in manifest.files:
            if info.path.endswith(CONTENT_ONLY):
                found[f"sha256 {label} {info.path}"] = info.sha256
    event = instance.get_latest_materialization_event(dg.AssetKey("evaluation"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    found.update({key: entry.value for key, entry in metadata.items() if key.startswith("bits_per_byte/")})
    return found


def run_problems(instance: dg.DagsterInstance, kill: Kill) -> list[str]:
    """The killed run marked failed, its gpu claims gone, no other run failed, no wait on its lock."""
    problems = []
    run = instance.get_run_by_id(kill.run_id)
    if run is None or run.status != dg.DagsterRunStatus.FAILURE:
        problems.append(f"killed run {kill.run_id[:8]} is {run.status.value if run else 'gone'}, not FAILURE")
    claims = instance.event_log_storage.get_concurrency_info(GPU_POOL).claimed_slots
    problems += [f"gpu slot still claimed by run {slot.run_id[:8]} ({slot.step_key})" for slot in claims]
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE])):
        if record.dagster_run.run_id != kill.run_id:
            problems.append(f"run {record.dagster_run.run_id[:8]} failed too")
    for record in instance.get_run_records(dg.RunsFilter(statuses=NOT_FINISHED_STATUSES)):
        problems.append(f"run {record.dagster_run.run_id[:8]} is still {record.dagster_run.status.value}")
    dead = f"pid {kill.pid} "  # how a waiter names the holder (partition_lock.describe)
    problems += [f"waited on the dead run's lock: {message}" for message in lock_waits(instance) if dead in message]
    return problems


def lock_waits(instance: dg.DagsterInstance) -> list[str]:
    """What steps said when they waited for a partition lock (the holder and since when)."""
    return [
        event.user_message
        for record in instance.get_run_records()
        for event in instance.all_logs(record.dagster_run.run_id)
        if LOCK_WAIT in (event.user_message or "")
    ]


@dataclass
class Reference:
    chain: ChainRun
    expected: dict[str, object]


@dataclass
class Outcome:
    point: KillPoint
    landed: str
    seconds: float
    retried: bool
    problems: list[str]
    lock_waits: int = 0  # waits for a live writer's partition lock: allowed, and said by the waiter

    @property
    def survived(self) -> bool:
        return not self.problems


@dataclass
class Setup:
    """What every pass shares: where passes go, the rewriting endpoint (none: a vLLM engine in the
    run) and the model it serves, the longest a pass may take, where progress is said."""

    work: Path
    endpoint: str | None = None
    served_model: Path | None = None
    timeout_s: float = 1200.0
    say: Callable[[str], None] = print

    def chain(self, name: str, point: KillPoint | None = None, reference: Reference | None = None) -> ChainRun:
        directory = self.work / name.replace("@", "-")
        directory.mkdir(parents=True)
        config = chaos_config(directory, self.endpoint, self.served_model)
        return run_chain(directory, config, point, reference and reference.chain, self.timeout_s, self.say)


def run_reference(setup: Setup) -> Reference:
    """The uninterrupted pass; it must itself be sound (no failed run, no bad manifest)."""
    chain = setup.chain("reference")
    problems = [chain.problem] if chain.problem else []
    problems += manifest_problems(chain.store)
    with open_home(chain.home) as instance:
        failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        problems += [f"run {r.dagster_run.run_id[:8]} failed" for r in failed]
        expected = outputs(chain.store, instance)
    if problems or not expected:
        raise RuntimeError(f"the reference pass is not sound ({chain.home}):\n" + "\n".join(problems))
    return Reference(chain, expected)


def run_point(setup: Setup, point: KillPoint, reference: Reference) -> Outcome:
    """One kill point from a fresh start, then every check against the reference. A kill that came
    after its step had ended (the step was quicker than in the reference: a warm cache, a quieter
    machine) missed the point: it is run again at half its delay, the table names the one that
    landed."""
    chain = setup.chain(point.name, point, reference)
    assert chain.kill is not None
    while chain.kill.landed != point.asset and point.percent > 0:
        shutil.rmtree(chain.home.parent)  # the kill missed its step
        point = replace(point, percent=point.percent // 2)
        setup.say(f"  the kill came after {point.asset} had ended ({chain.kill.landed}): again as {point.name}")
        chain = setup.chain(point.name, point, reference)
        assert chain.kill is not None
    problems = [chain.problem] if chain.problem else []
    problems += manifest_problems(chain.store)
    with open_home(chain.home) as instance:
        problems += run_problems(instance, chain.kill)
        got = outputs(chain.store, instance)
        runs = instance.get_run_records()
        retried = any(r.dagster_run.tags.get(PARENT_RUN_ID_TAG) == chain.kill.run_id for r in runs)
        waits = len(lock_waits(instance))
    for key in sorted(set(reference.expected) | set(got)):
        if reference.expected.get(key) != got.get(key):
            problems.append(f"{key}: {got.get(key)} (reference {reference.expected.get(key)})")
    return Outcome(point, chain.kill.landed, chain.seconds, retried, problems, waits)


# -- the command -----------------------------------------------------------------------------------
def select_points(spec: list[str] | None) -> list[KillPoint]:
    """`--points N`: the first N of KILL_POINTS (ordered so any prefix spreads over the chain);
    names: those points."""
    if not spec:
        return list(KILL_POINTS)
    if len(spec) == 1 and spec[0].isdigit():
        return list(KILL_POINTS[: int(spec[0])])
    return [KillPoint.parse(name) for name in spec]


def table(outcomes: list[Outcome]) -> str:
    lines = [f"{'kill point':<28} {'killed in':<24} {'retried':<8} {'lock waits':>10} {'pass s':>7}  result"]
    for o in outcomes:
        result = "survived" if o.survived else "FAILED: " + "; ".join(o.problems)
        retried = "yes" if o.retried else "no"
        lines.append(f"{o.point.name:<28} {o.landed:<24} {retried:<8} {o.lock_waits:>10} {o.seconds:>7.0f}  {result}")
    lines.append("")
    lines.append(f"{'stage':<28} {'points':>6} {'survived':>9}")
    stages: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        stages[o.point.asset].append(o)
    for stage, group in stages.items():
        lines.append(f"{stage:<28} {len(group):>6} {sum(o.survived for o in group):>9}")
    lines.append(f"survived {sum(o.survived for o in outcomes)}/{len(outcomes)}")
    return "\n".join(lines)


@contextlib.contextmanager
def rewriting_endpoint(work: Path, backend: str) -> Iterator[tuple[str | None, Path | None]]:
    """The tiny model served by vLLM for the whole benchmark, or nothing for an engine per run."""
    if backend == "vllm":
        yield None, None
        return
    model = build_tiny_model(work / "tiny_model")
    with vllm_server(
        model, work / "vllm_server.log", max_model_len=SERVER_MAX_MODEL_LEN, memory_share=SERVER_MEMORY_SHARE
    ) as url:
        yield url, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", nargs="+", help="how many (the first N), or names (asset@percent)")
    parser.add_argument("--keep", action="store_true", help="keep every pass's folder (failed ones are always kept)")
    parser.add_argument("--work-dir", type=Path, help="where passes go (default: a new temporary folder)")
    parser.add_argument("--rewrite-backend", choices=["endpoint", "vllm"], default="endpoint")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds a pass may take before it is a hang")
    parser.add_argument("--json", type=Path, help="write the outcomes here too")
    args = parser.parse_args()
    for signum in (signal.SIGTERM, signal.SIGHUP):  # unwind: the daemon's group and the server are ended
        signal.signal(signum, lambda number, _frame: sys.exit(128 + number))
    points = select_points(args.points)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(points)} kill points; passes under {work}", flush=True)
    outcomes: list[Outcome] = []
    with rewriting_endpoint(work, args.rewrite_backend) as (endpoint, model):
        setup = Setup(work, endpoint, model, args.timeout, lambda line: print(line, flush=True))
        reference = run_reference(setup)
        print(f"reference: {reference.chain.seconds:.0f} s, {len(reference.expected)} outputs", flush=True)
        if not args.keep:
            shutil.rmtree(reference.chain.home.parent)
        try:
            for point in points:
                try:
                    outcome = run_point(setup, point, reference)
                except Exception as error:  # the bench's own trouble (a point whose asset never ran): said, next
                    outcome = Outcome(point, "-", 0.0, False, [f"bench error: {error!r}"])
                outcomes.append(outcome)
                print(table([outcome]).splitlines()[1], flush=True)
                if outcome.survived and not args.keep:
                    shutil.rmtree(work / outcome.point.name.replace("@", "-"))
        finally:  # stopped early (SIGTERM): the table of the points done
            print(table(outcomes), flush=True)
            if args.json:
                args.json.write_text(
                    json.dumps([{"point": o.point.name, "landed": o.landed, "seconds": round(o.seconds, 1),
                                 "retried": o.retried, "problems": o.problems} for o in outcomes], indent=2)
                )  # fmt: skip
    return 0 if len(outcomes) == len(points) and all(o.survived for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
