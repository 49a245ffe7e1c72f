"""The reference side of bench/ingest.py: datatrove's WarcReader -> Trafilatura -> JsonlWriter.

Runs inside the reference environment (.venv-bench, bench/requirements-reference.txt),
never imported by the project: datatrove's pins clash with ours. It writes every
extracted document as one JSON line {"url", "text"} to --out and its timing and
datatrove's own counters to --timing, so the caller can score quality and speed alike.

What is timed: `LocalPipelineExecutor.run()` from call to return, i.e. starting the
task pool and its extractor sandboxes, reading, extracting and writing; both wall time and
CPU time (this process and its reaped children). Python's own start and importing datatrove
are timed apart (`import_seconds`) and not counted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_started = time.perf_counter()
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.extractors import Trafilatura  # noqa: E402
from datatrove.pipeline.readers import WarcReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

_IMPORT_SECONDS = time.perf_counter() - _started


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="WARC files (all in one directory)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of extracted {url, text}")
    parser.add_argument("--timing", type=Path, required=True, help="JSON with seconds and counters")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--start-method",
        default="fork",
        help="pool start method; fork keeps the workers our children, so their CPU time is counted "
        "(datatrove's default, forkserver, hides it and starts slower)",
    )
    return parser.parse_args()


def _cpu_seconds() -> float:
    """User + system time of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _stats(logging_dir: Path) -> dict[str, Any]:
    """datatrove's per-step counters (records read, extracted, timeouts, ...) from stats.json."""
    path = logging_dir / "stats.json"
    if not path.is_file():
        return {}
    counters: dict[str, Any] = {}
    for step in json.loads(path.read_text()):
        name = " ".join(str(step.get("name", "")).encode("ascii", "ignore").decode().split()).strip("- ")
        counters[name] = {
            key: value
            for key, value in step.get("stats", {}).items()
            if isinstance(value, int) and not key.endswith(".jsonl")
        }
    return counters


def main() -> int:
    args = _parse()
    files = [path.resolve() for path in args.files]
    folders = {path.parent for path in files}
    if len(folders) != 1:
        sys.exit("all WARC files must sit in one directory")
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as tmp:
        work = Path(tmp)
        paths_file = work / "paths.txt"
        paths_file.write_text("".join(f"{path.name}\n" for path in files))
        output = work / "out"
        logging_dir = work / "logs"  # fresh each run: datatrove skips tasks it finds completed
        executor = LocalPipelineExecutor(
            pipeline=[
                WarcReader(str(folders.pop()), paths_file=str(paths_file)),
                Trafilatura(favour_precision=True),  # datatrove's defaults: 1 s per-page timeout
                JsonlWriter(str(output), output_filename="${rank}.jsonl", compression=None),
            ],
            tasks=args.tasks,
            workers=args.workers,
            logging_dir=str(logging_dir),
            start_method=args.start_method,
        )
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        executor.run()
        seconds = time.perf_counter() - started
        cpu_seconds = _cpu_seconds() - cpu_before
        documents = 0
        with args.out.open("w", encoding="utf-8") as sink:
            for part in sorted(output.glob("*.jsonl")):
                with part.open(encoding="utf-8") as source:
                    for line in source:
                        doc = json.loads(line)
                        url = doc.get("metadata", {}).get("url", "")
                        sink.write(json.dumps({"url": url, "text": doc["text"]}, ensure_ascii=False) + "\n")
                        documents += 1
        timing = {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "import_seconds": _IMPORT_SECONDS,
            "documents": documents,
            "tasks": args.tasks,
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "stats": _stats(logging_dir),
            "versions": {name: importlib.metadata.version(name) for name in ("datatrove", "trafilatura")},
        }
    args.timing.write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
