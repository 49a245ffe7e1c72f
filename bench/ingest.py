"""Ingest benchmark: our WARC -> documents engine against datatrove, on the same files and cores.

Why: the pipeline's first stage promises a fast path (Resiliparse) at >= 10x datatrove's
docs/s and a precise path (Trafilatura) faster than datatrove at no lower quality. This
script measures both promises in one run and prints one table:

- ours, `resources.ingest.engine.ingest_files` with extractor=resiliparse and =trafilatura, one
  worker per core, writing zstd Parquet shards through `ShardStore`; timed end to end
  in this process (pool start-up, reading, extraction, shard writes);
- datatrove's WarcReader -> Trafilatura -> JsonlWriter on a LocalPipelineExecutor with
  the same number of workers (tasks = workers, pool started with fork so its CPU time can
  be counted), run in the reference environment (bench/_datatrove_ingest.py);
  `LocalPipelineExecutor.run()` is timed, Python start and imports are not.

Runs are interleaved and repeated (best time kept) because the machine is noisy. Quality
is scored on evaldata.json with bench/_quality.py.

    .venv/bin/python bench/ingest.py --reference-python .venv-bench/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
from _quality import Quality, load_evaldata, score  # noqa: E402
from fastwarc.warc import ArchiveIterator, WarcRecordType  # noqa: E402

from resources.common.cpus import available_cpus  # noqa: E402
from resources.common.storage import ShardInfo, ShardStore  # noqa: E402
from resources.ingest.engine import ingest_files  # noqa: E402
from resources.settings import IngestSettings  # noqa: E402

DEFAULT_DATA_DIR = ROOT.parent / "shared" / "corpora" / "web-warc"
DEFAULT_REFERENCE_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
DATATROVE_SCRIPT = Path(__file__).resolve().parent / "_datatrove_ingest.py"
REFERENCE = "datatrove trafilatura"

# one timed run: (wall seconds, CPU seconds, documents out, URL -> extracted text, details)
RunResult = tuple[float, float, int, dict[str, str], dict[str, Any]]
Runner = Callable[[Path], RunResult]


@dataclass
class System:
    """One contender: how to run it once, and what its runs measured."""

    name: str
    workers: int
    run: Runner
    repeats: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    documents: int = 0
    quality: Quality | None = None
    common_quality: Quality | None = None  # on the pages every system gave output for
    texts: dict[str, str] = field(default_factory=dict, repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return min(self.seconds) if self.seconds else float("nan")

    @property
    def best_cpu(self) -> float:
        """CPU time of the run with the best wall time."""
        return self.cpu_seconds[self.seconds.index(self.best)] if self.seconds else float("nan")

    @property
    def min_cpu(self) -> float:
        return min(self.cpu_seconds) if self.cpu_seconds else float("nan")

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.best if self.seconds else float("nan")

    @property
    def docs_per_cpu_second(self) -> float:
        """Steadier than wall time on a shared machine: other work slows us but bills its own CPU."""
        return self.documents / self.min_cpu if self.cpu_seconds else float("nan")


def cpu_seconds() -> float:
    """User + system time of this process and its reaped children (the extraction pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ours(extractor: str, workers: int, files: list[str]) -> Runner:
    """Our engine, writing real shards to a scratch store, timed around the whole call."""

    def run(scratch: Path) -> RunResult:
        store = ShardStore(str(scratch / "store"))

        def write_shard(index: int, frame: pl.DataFrame) -> ShardInfo:
            return store.write_parquet_shard("raw_documents", "bench", index, frame)

        settings = IngestSettings(extractor=extractor, workers=workers)
        cpu_before, started = cpu_seconds(), time.perf_counter()
        result = ingest_files(files, crawl_batch="bench", settings=settings, write_shard=write_shard)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
        if result.skips["extract_error"] > result.read.records / 2 or not result.documents:
            # e.g. an extractor that cannot even be imported fails every page, one by one
            raise RuntimeError(f"ours {extractor}: no usable output, skips {dict(result.skips)}")
        shards = [Path(store.partition_dir("raw_documents", "bench")) / s.path for s in result.shards]
        frame = (
            pl.concat([pl.read_parquet(path, columns=["url", "text"]) for path in shards])
            if shards
            else pl.DataFrame({"url": [], "text": []}, schema={"url": pl.String, "text": pl.String})
        )
        texts = dict(zip(frame["url"].to_list(), frame["text"].to_list(), strict=True))
        details = {
            "records_read": result.read.records,
            "skips": dict(result.skips),
            "engine_seconds": result.seconds,
        }
        return seconds, cpu, result.documents, texts, details

    return run


def datatrove(python: Path, workers: int, files: list[str]) -> Runner:
    """The reference pipeline in its own environment; it reports its own timing."""

    def run(scratch: Path) -> RunResult:
        out, timing = scratch / "datatrove.jsonl", scratch / "datatrove-timing.json"
        command = [str(python), str(DATATROVE_SCRIPT), *files, "--out", str(out), "--timing", str(timing)]
        command += ["--tasks", str(workers), "--workers", str(workers)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise RuntimeError(f"datatrove run failed (exit {done.returncode}):\n{tail}")
        measured = json.loads(timing.read_text())
        texts: dict[str, str] = {}
        with out.open(encoding="utf-8") as lines:
            for line in lines:
                doc = json.loads(line)
                texts.setdefault(doc["url"], doc["text"])
        details = {k: measured[k] for k in ("import_seconds", "stats", "versions", "tasks") if k in measured}
        return measured["seconds"], measured["cpu_seconds"], measured["documents"], texts, details

    return run


def warc_urls(files: list[str]) -> set[str]:
    """Target URIs of the response records: evaldata.json also names pages the WARCs lack."""
    urls: set[str] = set()
    for path in files:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=False):
                urls.add(record.headers.get("WARC-Target-URI") or "")
    return urls


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="directory of *.warc.gz")
    parser.add_argument("--files", type=Path, nargs="+", help="WARC files (default: all in --data-dir)")
    parser.add_argument("--evaldata", type=Path, help="default: evaldata.json beside the WARCs")
    parser.add_argument(
        "--reference-python",
        type=Path,
        default=DEFAULT_REFERENCE_PYTHON,
        help="python of the reference environment (make .venv-bench/.installed)",
    )
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core, for every system")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per system; the best counts")
    parser.add_argument(
        "--single-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the Trafilatura systems once with 1 worker",
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    return parser.parse_args(argv)


def _systems(args: argparse.Namespace, files: list[str]) -> list[System]:
    workers = args.workers or available_cpus()
    systems = [
        System("ours resiliparse", workers, ours("resiliparse", workers, files), args.repeats),
        System(REFERENCE, workers, datatrove(args.reference_python, workers, files), args.repeats),
        System("ours trafilatura", workers, ours("trafilatura", workers, files), args.repeats),
    ]
    if args.single_worker and workers > 1:
        systems += [
            System(f"{REFERENCE} (1 worker)", 1, datatrove(args.reference_python, 1, files), 1),
            System("ours trafilatura (1 worker)", 1, ours("trafilatura", 1, files), 1),
        ]
    if not args.reference_python.is_file():
        print(
            f"reference python {args.reference_python} not found (make .venv-bench/.installed): timing ours only",
            file=sys.stderr,
        )
        systems = [s for s in systems if not s.name.startswith(REFERENCE)]
    return systems


def _measure(systems: list[System], evaldata: dict[str, dict[str, list[str]]]) -> None:
    """Interleaved rounds, so a noisy spell hurts every system alike."""
    for round_ in range(max(s.repeats for s in systems)):
        for system in systems:
            if round_ >= system.repeats:
                continue
            with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
                seconds, cpu, documents, texts, details = system.run(Path(scratch))
            system.seconds.append(seconds)
            system.cpu_seconds.append(cpu)
            progress = (
                f"  round {round_ + 1}: {system.name:<32} {seconds:7.2f} s wall {cpu:7.2f} s CPU  {documents} docs"
            )
            print(progress, file=sys.stderr)
            if system.quality is None:  # extraction is deterministic: score the first run
                system.documents, system.details, system.texts = documents, details, texts
                system.quality = score(texts, evaldata)
    # Readers differ in which records they accept (datatrove sniffs MIME types with libmagic):
    # scoring only the pages all systems extracted separates extraction from reading.
    common = set(evaldata)
    for system in systems:
        common &= {url for url, text in system.texts.items() if text.strip()}
    for system in systems:
        system.common_quality = score(system.texts, {url: evaldata[url] for url in common})
        system.texts = {}


def _table(systems: list[System]) -> str:
    reference = next((s for s in systems if s.name == REFERENCE), None)
    header = (
        f"{'system':<32} {'workers':>7} {'docs':>5} {'wall s':>7} {'CPU s':>6} {'docs/s':>7}"
        f" {'vs datatrove':>12} {'(CPU)':>6} {'with found':>10} {'without absent':>14} {'F1':>5} {'F1 common':>9}"
    )
    lines = [header, "-" * len(header)]
    for s in systems:
        ratio = f"{s.docs_per_second / reference.docs_per_second:.2f}x" if reference else "-"
        cpu_ratio = f"{s.docs_per_cpu_second / reference.docs_per_cpu_second:.2f}x" if reference else "-"
        q, c = s.quality, s.common_quality
        assert q is not None and c is not None
        lines.append(
            f"{s.name:<32} {s.workers:>7} {s.documents:>5} {s.best:>7.2f} {s.best_cpu:>6.1f}"
            f" {s.docs_per_second:>7.1f} {ratio:>12} {cpu_ratio:>6}"
            f" {q.with_share:>10.1%} {q.without_share:>14.1%} {q.f1:>5.3f} {c.f1:>9.3f}"
        )
    common = systems[0].common_quality.pages if systems[0].common_quality else 0
    rounds = max(s.repeats for s in systems)
    lines += [
        f"docs/s: documents written / best wall time of {rounds} interleaved runs (CPU s: that run's CPU time,"
        " workers included);",
        "(CPU): the same ratio in documents per CPU second (least CPU time of the runs), steadier under load.",
        "with found: wanted snippets present, over all evaluated pages (no output = all missed);"
        " without absent: boilerplate",
        f"kept out, over pages with output; F1 as Trafilatura's evaluation; F1 common: on the {common} pages"
        " every system extracted.",
    ]
    if reference:
        lines.append(_goals(systems, reference))
    return "\n".join(lines)


def _goals(systems: list[System], reference: System) -> str:
    """The two promises the ingest stage makes, checked against this run."""
    by_name = {s.name: s for s in systems}
    fast, precise = by_name.get("ours resiliparse"), by_name.get("ours trafilatura")
    verdicts = []
    if fast:
        ratio = fast.docs_per_second / reference.docs_per_second
        cpu = fast.docs_per_cpu_second / reference.docs_per_cpu_second
        verdicts.append(f"fast path >= 10x: {ratio:.2f}x, CPU {cpu:.2f}x ({'met' if ratio >= 10 else 'MISSED'})")
    if precise and precise.quality and precise.common_quality and reference.quality and reference.common_quality:
        ratio = precise.docs_per_second / reference.docs_per_second
        quality_ok = (
            precise.quality.f1 >= reference.quality.f1 and precise.common_quality.f1 >= reference.common_quality.f1
        )
        verdicts.append(
            f"precise path faster at >= F1: {ratio:.2f}x, F1 {precise.quality.f1:.3f} vs {reference.quality.f1:.3f}"
            f" ({'met' if ratio > 1 and quality_ok else 'MISSED'})"
        )
    return "goals: " + "; ".join(verdicts)


def _report(systems: list[System], files: list[str], evaldata_path: Path, evaldata: dict[str, Any]) -> dict[str, Any]:
    reference = next((s for s in systems if s.name == REFERENCE), None)
    return {
        "files": files,
        "evaldata": str(evaldata_path),
        "evaluated_pages": len(evaldata),
        "cpu_count": available_cpus(),
        "load_average_end": os.getloadavg()[0],
        "reference": REFERENCE if reference else None,
        "systems": {
            s.name: {
                "workers": s.workers,
                "seconds": s.seconds,
                "best_seconds": s.best,
                "cpu_seconds": s.cpu_seconds,
                "documents": s.documents,
                "docs_per_second": s.docs_per_second,
                "vs_reference": s.docs_per_second / reference.docs_per_second if reference else None,
                # noise-robust companion: documents per CPU second, relative to the reference's
                "vs_reference_cpu": s.docs_per_cpu_second / reference.docs_per_cpu_second if reference else None,
                "quality": s.quality.as_dict() if s.quality else None,
                "quality_on_common_pages": s.common_quality.as_dict() if s.common_quality else None,
                "details": s.details,
            }
            for s in systems
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    files = sorted(str(p.resolve()) for p in (args.files or args.data_dir.glob("*.warc.gz")))
    if not files:
        sys.exit(f"no WARC files given and none in {args.data_dir}")
    evaldata_path = args.evaldata or (Path(files[0]).parent / "evaldata.json")
    listed = load_evaldata(evaldata_path)
    present = warc_urls(files)
    evaldata = {url: entry for url, entry in listed.items() if url in present}
    systems = _systems(args, files)
    intro = (
        f"{len(files)} WARC files, {len(present)} response records, {len(evaldata)} of the"
        f" {len(listed)} pages in {evaldata_path.name} found in them, {available_cpus()} cores,"
        f" load average {os.getloadavg()[0]:.1f} (other work skews wall times; CPU times less so)"
    )
    print(intro, file=sys.stderr)
    _measure(systems, evaldata)
    print(_table(systems))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(_report(systems, files, evaldata_path, evaldata), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
