"""Crawl files in, document shards out: the engine behind the `raw_documents` asset.

The main process streams records (FastWARC is far faster than extraction), a pool of
spawned processes decodes and extracts, and finished documents are flushed to a shard
every `shard_rows` documents, so memory is bounded by the shard size and the number of
batches in flight, never by the size of the crawl.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from typing import Literal
from urllib.parse import urlsplit

import fsspec
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from resources.common.cpus import available_cpus
from resources.common.executor import ShardMapper
from resources.common.partition_stage import concat_or_none
from resources.common.schemas import DOCUMENT_SCHEMA, PROVENANCE_COLUMNS
from resources.common.storage import ShardInfo
from resources.ingest.checks import DocumentChecks
from resources.ingest.extract import Extracted, ExtractOptions, extract_batch
from resources.ingest.warc import RawPage, ReadStats, crawl_of, iter_pages


class IngestSettings(BaseModel):
    """Defined here, not in resources.settings, so that extraction workers, which re-import the
    caller's main module when spawned, do not drag every other stage's imports along."""

    model_config = ConfigDict(extra="forbid")

    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"
    max_record_bytes: int = Field(default=5_000_000, ge=1024)
    min_text_chars: int = Field(default=1, ge=1)
    max_replacement_ratio: float = Field(default=0.02, ge=0, le=1)
    html_content_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    shard_rows: int = Field(default=20_000, ge=1)
    workers: int = Field(default=0, ge=0, description="extraction processes; 0 = one per CPU this process may use")
    doc_timeout_s: float = Field(default=20.0, gt=0)

    def output_shaping(self) -> dict[str, object]:
        """The settings whose change alters the documents written (not how fast)."""
        return self.model_dump(exclude={"workers", "doc_timeout_s"})


_BATCH_PAGES = 32
_BATCH_BYTES = 4 << 20


@dataclass
class IngestResult:
    shards: list[ShardInfo]
    documents: int
    read: ReadStats
    skips: Counter[str] = field(default_factory=Counter)  # read skips and extraction skips together
    seconds: float = 0.0
    checks: DocumentChecks = field(default_factory=DocumentChecks)
    provenance: pl.DataFrame | None = None  # PROVENANCE_COLUMNS of every document, for the catalog

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def domain_of(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower()
    return host.removeprefix("www.")


def ingest_files(
    files: Iterable[str],
    *,
    crawl_batch: str,
    settings: IngestSettings,
    write_shard: Callable[[int, pl.DataFrame], ShardInfo],
    crawl: str | None = None,
    storage_options: dict[str, object] | None = None,
    log: Callable[[str], None] = lambda message: None,
    mapper: ShardMapper | None = None,
) -> IngestResult:
    """Read every file of one crawl batch and write its documents as shards; pages are extracted
    in `settings.workers` processes, or as Ray tasks with a `mapper`."""
    started = time.perf_counter()
    read = ReadStats()
    skips: Counter[str] = Counter()
    shards: list[ShardInfo] = []
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    documents = 0
    last_report = started
    checks, provenance = DocumentChecks(), []

    def flush() -> None:
        if rows:
            frame = pl.DataFrame(rows, schema=DOCUMENT_SCHEMA, orient="row")
            shards.append(write_shard(len(shards), frame))
            checks.add(frame)
            provenance.append(frame.select(PROVENANCE_COLUMNS))
            rows.clear()

    pages = _pages(files, read, settings, storage_options or {})
    options = ExtractOptions(
        extractor=settings.extractor,
        max_replacement_ratio=settings.max_replacement_ratio,
        min_text_chars=settings.min_text_chars,
        timeout_s=settings.doc_timeout_s,
    )
    for page, result in _extract(pages, options, settings.workers or available_cpus(), mapper):
        if result.skip:
            skips[result.skip] += 1
            continue
        if result.doc_id in seen:
            skips["duplicate_text"] += 1
            continue
        seen.add(result.doc_id)
        rows.append(_row(page, result, crawl_batch, crawl))
        documents += 1
        if len(rows) >= settings.shard_rows:
            flush()
        if time.perf_counter() - last_report > 30:
            last_report = time.perf_counter()
            log(f"{crawl_batch}: {read.records} records read, {documents} documents so far")
    flush()
    skips.update(read.skips)
    return IngestResult(
        shards, documents, read, skips, time.perf_counter() - started, checks, concat_or_none(provenance)
    )


def _pages(
    files: Iterable[str], read: ReadStats, settings: IngestSettings, storage_options: dict[str, object]
) -> Iterator[RawPage]:
    content_types = tuple(settings.html_content_types)
    for path in files:
        try:
            opened = fsspec.open(path, "rb", **storage_options).open()
        except OSError as exc:
            # Not a counted skip: a rerun of a batch already ingested would silently lose the
            # file's documents. The batch fails alone, saying which file and why.
            raise CrawlFileUnavailable(
                f"crawl file registered for this batch cannot be opened: {path}: {_why(exc)} "
                "(restore it to ingest this batch; the batch's earlier output, if any, is unchanged)"
            ) from exc
        with opened as stream:
            if _is_empty(opened):
                read.files += 1
                read.skips["empty_file"] += 1
                read.file_errors[path] = "empty file"
                continue
            yield from iter_pages(stream, path, read, settings.max_record_bytes, content_types)


class CrawlFileUnavailable(FileNotFoundError):
    """A file named by a batch spec is gone or cannot be opened (moved, deleted, a symlink loop)."""


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    if isinstance(exc, FileNotFoundError):
        return "gone since the crawl sensor registered it"
    return exc.strerror or str(exc)


def _is_empty(stream) -> bool:
    size = getattr(stream, "size", None)
    if size is None:
        try:
            size = os.fstat(stream.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            return False
    return size == 0


def _batches(pages: Iterator[RawPage]) -> Iterator[list[RawPage]]:
    batch: list[RawPage] = []
    size = 0
    for page in pages:
        batch.append(page)
        size += len(page.payload)
        if len(batch) >= _BATCH_PAGES or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _payloads(batch: list[RawPage]) -> list[tuple[bytes, str | None, str, str]]:
    return [(p.payload, p.charset, p.record_type, p.url) for p in batch]


def _extract(
    pages: Iterator[RawPage], options: ExtractOptions, workers: int, mapper: ShardMapper | None = None
) -> Iterator[tuple[RawPage, Extracted]]:
    """Results in input order; at most 2 batches per worker (or per Ray CPU) in flight bound the memory."""
    if mapper is not None:
        batches, sent = itertools.tee(_batches(pages))  # tee holds only the batches in flight
        for batch, results in zip(batches, mapper.map(extract_batch, map(_payloads, sent), options), strict=True):
            yield from zip(batch, results, strict=True)
        return
    if workers <= 1:
        for batch in _batches(pages):
            yield from zip(batch, extract_batch(_payloads(batch), options), strict=True)
        return
    in_flight: deque[tuple[list[RawPage], Future[list[Extracted]]]] = deque()
    with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
        for batch in _batches(pages):
            in_flight.append((batch, pool.submit(extract_batch, _payloads(batch), options)))
            if len(in_flight) >= 2 * workers:
                done, future = in_flight.popleft()
                yield from zip(done, future.result(), strict=True)
        while in_flight:
            done, future = in_flight.popleft()
            yield from zip(done, future.result(), strict=True)


def _pool_context() -> BaseContext:
    """fork when this process runs a single thread (a script, a benchmark): workers start in
    milliseconds. Otherwise (a Dagster step has threads) spawn, because forking a threaded
    process can copy a lock some other thread holds."""
    return get_context("fork" if threading.active_count() == 1 else "spawn")


def _row(page: RawPage, result: Extracted, crawl_batch: str, crawl: str | None) -> dict[str, object]:
    return {
        "doc_id": result.doc_id,
        "text": result.text,
        "url": page.url,
        "domain": domain_of(page.url),
        "crawl": crawl_of(page.warc_path, crawl),
        "crawl_batch": crawl_batch,
        "warc_path": page.warc_path,
        "warc_record_id": page.warc_record_id,
        "fetch_time": page.fetch_time,
        "record_type": page.record_type,
        "content_type": page.content_type,
        "charset": result.charset,
        "source_bytes": len(page.payload),
        "capped": page.capped,
    }
