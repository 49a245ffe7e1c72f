"""MinHash signatures of a partition's texts, computed by this process and a few helper processes,
or as tasks of a Ray cluster (resources.common.executor)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import chain, islice
from multiprocessing import get_context

import polars as pl

from resources.common.executor import ShardMapper
from resources.dedup.minhash import Sketches, SketchSpec, sketch


class Sketcher:
    """Signatures batch by batch, in order. This process is one of the `workers`: it sketches
    batches itself while the helpers (spawned processes, `workers - 1` of them) start (~0.5 s of
    imports and a warm-up batch) and whenever each already has a batch, so it never waits idle
    for them. Helpers start with the first partition of more than one batch and live until
    `close()`; a dead helper raises BrokenProcessPool instead of hanging."""

    def __init__(self, spec: SketchSpec, workers: int, mapper: ShardMapper | None = None) -> None:
        self.spec, self.workers, self.mapper = spec, workers, mapper
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[Sketches] | None = None

    def map(self, batches: Iterator[pl.Series]) -> Iterator[Sketches]:
        if self.mapper is not None:
            yield from self.mapper.map(sketch, batches, self.spec)
            return
        head = list(islice(batches, 2))
        if self.workers <= 1 or len(head) < 2:
            yield from (sketch(batch, self.spec) for batch in chain(head, batches))
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers - 1, mp_context=get_context("spawn"), initializer=_one_thread)
            self._ready = self._pool.submit(sketch, pl.Series(["a warm-up batch"]), self.spec)
        queue: deque[Future[Sketches] | Sketches] = deque()
        for batch in chain(head, batches):
            busy = sum(isinstance(item, Future) and not item.done() for item in queue)
            if self._ready is not None and self._ready.done() and busy < self.workers - 1:
                queue.append(self._pool.submit(sketch, batch, self.spec))
            else:
                queue.append(sketch(batch, self.spec))
            while queue and not (isinstance(queue[0], Future) and not queue[0].done()):
                yield _result(queue.popleft())
        while queue:
            yield _result(queue.popleft())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)  # idle helpers exit on their own
            self._pool = self._ready = None


def _result(item: Future[Sketches] | Sketches) -> Sketches:
    return item.result() if isinstance(item, Future) else item


def _one_thread() -> None:
    """Each worker is one of `workers` processes: keep rensa's thread pool from oversubscribing."""
    os.environ["RAYON_NUM_THREADS"] = "1"
