"""The reference side of bench/dedup.py: datatrove's four MinHash stages on a JSONL corpus.

Runs inside the reference environment (.venv-bench, bench/requirements-reference.txt), never
imported by the project: datatrove's pins clash with ours. Stages, as in FineWeb's own
minhash example: signatures (one task per input file), buckets (one task per band), clustering
(one task), filtering (one task per input file), all on a LocalPipelineExecutor with --workers
processes. It writes the ids of the documents it removed, one per line, to --removed, and
timing (wall and CPU seconds per stage and in total) to --timing.

What is timed: each stage's `LocalPipelineExecutor.run()`, from call to return. Python's start
and importing datatrove are timed apart (`import_seconds`) and not counted.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

_started = time.perf_counter()
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.dedup.minhash import (  # noqa: E402
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402
from datatrove.utils.hashing import HashConfig  # noqa: E402

_IMPORT_SECONDS = time.perf_counter() - _started


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="directory of *.jsonl files with {id, text}")
    parser.add_argument("--removed", type=Path, required=True, help="ids of removed documents, one a line")
    parser.add_argument("--timing", type=Path, required=True, help="JSON with seconds per stage")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--bands", type=int, default=14)
    parser.add_argument("--rows", type=int, default=8)
    return parser.parse_args()


def _cpu_seconds() -> float:
    """User + system time of this process and of its children that have been waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    args = _parse()
    files = sorted(args.corpus.glob("*.jsonl"))
    config = MinhashConfig(
        n_grams=args.ngram,
        num_buckets=args.bands,
        hashes_per_bucket=args.rows,
        hash_config=HashConfig(precision=64, hash_fc="xxhash"),
    )
    with tempfile.TemporaryDirectory(prefix="dt-dedup-") as tmp:
        work = Path(tmp)

        def reader() -> JsonlReader:
            return JsonlReader(str(args.corpus), glob_pattern="*.jsonl", text_key="text", id_key="id")

        stages = {
            "signatures": ([reader(), MinhashDedupSignature(str(work / "sigs"), config=config)], len(files)),
            "buckets": ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], args.bands),
            "cluster": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
            "filter": (
                [
                    reader(),
                    MinhashDedupFilter(
                        str(work / "remove"),
                        exclusion_writer=JsonlWriter(str(work / "removed"), compression=None),
                    ),
                    JsonlWriter(str(work / "kept"), compression=None),
                ],
                len(files),
            ),
        }
        timing: dict[str, object] = {}
        total = total_cpu = 0.0
        for name, (pipeline, tasks) in stages.items():
            executor = LocalPipelineExecutor(
                pipeline=pipeline,
                tasks=tasks,
                workers=min(args.workers, tasks),
                logging_dir=str(work / "logs" / name),
                start_method="fork",  # keeps the workers our children, so their CPU time is counted
            )
            cpu_before, started = _cpu_seconds(), time.perf_counter()
            executor.run()
            seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
            timing[name] = {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}
            total, total_cpu = total + seconds, total_cpu + cpu
        removed = []
        for part in sorted((work / "removed").glob("*.jsonl")):
            with part.open(encoding="utf-8") as lines:
                removed += [json.loads(line)["id"] for line in lines]
        args.removed.write_text("".join(f"{doc_id}\n" for doc_id in removed))
        timing |= {
            "seconds": total,
            "cpu_seconds": total_cpu,
            "import_seconds": _IMPORT_SECONDS,
            "removed": len(removed),
            "versions": {"datatrove": importlib.metadata.version("datatrove")},
        }
    args.timing.write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
