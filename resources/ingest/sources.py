"""Discovering crawl files and grouping them into crawl batches (the partition keys).

A batch spec (`crawl_batches/<key>.json` in storage) is the source of truth for which
files a partition holds; the index beside the specs lets the sensor tell new files from
registered ones with one read, however long the crawl's listing.
"""

from __future__ import annotations

import fnmatch
import gzip
import posixpath
import re
from dataclasses import dataclass

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from resources.common.storage import ShardStore, stable_hash
from resources.ingest.warc import crawl_of

BATCHES_DIR = "crawl_batches"
INDEX_NAME = "_index.json"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CRAWL_SUFFIXES = (".warc.wet.gz", ".warc.wat.gz", ".warc.gz", ".wet.gz", ".warc", ".wet", ".gz")


class SourceSettings(BaseModel):
    """Where the crawl sensor looks for new files."""

    model_config = ConfigDict(extra="forbid")

    url: str = "data/sample"
    patterns: list[str] = Field(default_factory=lambda: ["*.warc.gz", "*.warc", "*.wet.gz", "*.warc.wet.gz", "*.wet"])
    listing: str | None = None
    listing_base_url: str = ""
    crawl: str | None = None
    files_per_partition: int = Field(default=2, ge=1)
    max_files_per_tick: int = Field(default=1000, ge=1)
    interval_seconds: int = Field(default=60, ge=1)
    sensor_running: bool = Field(default=False, description="start the sensor with the daemon, no click needed")
    storage_options: dict[str, object] = Field(default_factory=dict)


class SourceNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class CrawlBatch:
    key: str
    crawl: str
    files: tuple[str, ...]

    def spec(self) -> dict[str, object]:
        return {"key": self.key, "crawl": self.crawl, "files": list(self.files)}


def list_crawl_files(source: SourceSettings) -> list[str]:
    """Every crawl file the source offers now, sorted: a directory or prefix (local or s3://)
    matched by patterns, or a Common Crawl `warc.paths`/`wet.paths` listing (gzip or plain)."""
    if source.listing:
        return _read_listing(source)
    fs, root = fsspec.core.url_to_fs(source.url, **source.storage_options)
    if not fs.isdir(root):
        raise SourceNotFound(f"crawl source directory does not exist: {source.url}")
    found = set()
    for pattern in source.patterns:
        found.update(path for path in fs.find(root) if fnmatch.fnmatch(posixpath.basename(path), pattern))
    return sorted(fs.unstrip_protocol(path) if _remote(fs) else path for path in found)


def _read_listing(source: SourceSettings) -> list[str]:
    try:
        with fsspec.open(source.listing, "rb", **source.storage_options) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise SourceNotFound(f"crawl listing does not exist: {source.listing}") from exc
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    base = source.listing_base_url.rstrip("/")
    paths = [line.strip() for line in data.decode().splitlines() if line.strip()]
    return sorted({f"{base}/{path.lstrip('/')}" if base else path for path in paths})


def _remote(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" not in protocols and "local" not in protocols


def batch_key(crawl: str, first_file: str) -> str:
    """Readable and stable: the crawl, then the first file's stem (without the crawl repeated)."""
    stem = posixpath.basename(first_file)
    for suffix in _CRAWL_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    key = stem if stem.startswith(crawl) else f"{crawl}.{stem}"
    return _KEY_UNSAFE.sub("_", key).strip("._") or "batch"


def plan_batches(
    new_files: list[str], files_per_partition: int, crawl: str | None, taken: set[str]
) -> list[CrawlBatch]:
    """Group new files by crawl, then into batches of `files_per_partition` in listing order."""
    by_crawl: dict[str, list[str]] = {}
    for path in new_files:
        by_crawl.setdefault(crawl_of(path, crawl), []).append(path)
    batches = []
    for crawl_name, paths in sorted(by_crawl.items()):
        for start in range(0, len(paths), files_per_partition):
            chunk = tuple(paths[start : start + files_per_partition])
            key = base = batch_key(crawl_name, chunk[0])
            suffix = 1
            while key in taken:
                suffix += 1
                key = f"{base}-{suffix}"
            taken.add(key)
            batches.append(CrawlBatch(key, crawl_name, chunk))
    return batches


class BatchRegistry:
    """The registered batches of a store: specs plus an index of file -> batch key."""

    def __init__(self, store: ShardStore) -> None:
        self.store = store

    def _index_path(self) -> str:
        return self.store.path(BATCHES_DIR, INDEX_NAME)

    def index(self) -> dict[str, str]:
        path = self._index_path()
        return self.store.read_json(path) if self.store.fs.exists(path) else {}

    def fingerprint(self) -> str:
        return stable_hash(self.index())[:16]

    def register(self, batches: list[CrawlBatch]) -> None:
        """Specs first, index last: a crash in between leaves specs the index does not name
        yet, and the next tick, seeing their files as new, writes them again under the same keys."""
        for batch in batches:
            self.store.write_json(self.store.path(BATCHES_DIR, f"{batch.key}.json"), batch.spec())
        index = self.index()
        for batch in batches:
            index.update(dict.fromkeys(batch.files, batch.key))
        self.store.write_json(self._index_path(), index)

    def spec(self, key: str) -> dict:
        path = self.store.path(BATCHES_DIR, f"{key}.json")
        if not self.store.fs.exists(path):
            raise KeyError(f"crawl batch {key!r} is not registered (no {path})")
        return self.store.read_json(path)

    def all_specs(self) -> dict[str, dict]:
        specs = {}
        for path in self.store.fs.glob(self.store.path(BATCHES_DIR, "*.json")):
            if posixpath.basename(path) != INDEX_NAME:
                spec = self.store.read_json(path)
                specs[spec["key"]] = spec
        return specs

    def discover(self, source: SourceSettings) -> list[CrawlBatch]:
        """Batches for the files the source offers that no batch holds yet (at most
        `max_files_per_tick` files, so one tick over a fresh 90k-file crawl stays short)."""
        index = self.index()
        new_files = [path for path in list_crawl_files(source) if path not in index]
        new_files = new_files[: source.max_files_per_tick]
        taken = set(index.values())
        return plan_batches(new_files, source.files_per_partition, source.crawl, taken)
