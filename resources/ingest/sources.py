"""Discovering crawl files and grouping them into crawl batches (the partition keys).

A batch spec (`crawl_batches/<key>.json` in storage) is the source of truth for which
files a partition holds; the index beside the specs lets the sensor tell new files from
registered ones with one read, however long the crawl's listing.
"""

from __future__ import annotations

import errno
import fnmatch
import gzip
import os
import posixpath
import re
import stat
from dataclasses import dataclass

import fsspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from resources.common.storage import (
    CredentialsEnv,
    ShardStore,
    check_name,
    refuse_credentials,
    refuse_url_credentials,
    stable_hash,
)
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
    storage_options: dict[str, object] = Field(default_factory=dict, description="fsspec options, no credentials")
    credentials_env: CredentialsEnv = Field(default_factory=CredentialsEnv)

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, object]) -> dict[str, object]:
        return refuse_credentials(options, "source.storage_options")

    @field_validator("url", "listing", "listing_base_url")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        return refuse_url_credentials(url, "source")

    def fs_options(self) -> dict[str, object]:
        """The fsspec options to open crawl files with, credentials read from the environment now."""
        return {**self.storage_options, **self.credentials_env.resolve()}


class SourceNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class CrawlBatch:
    key: str
    crawl: str
    files: tuple[str, ...]

    def spec(self) -> dict[str, object]:
        return {"key": self.key, "crawl": self.crawl, "files": list(self.files)}


def list_crawl_files(source: SourceSettings, skipped: dict[str, str] | None = None) -> list[str]:
    """Every crawl file the source offers now, sorted: a directory or prefix (local or s3://)
    matched by patterns, or a Common Crawl `warc.paths`/`wet.paths` listing (gzip or plain).
    Entries that cannot be crawl files (a symbolic link loop or a dangling one, a listing line
    climbing out of its base with `..`) are left out, each with its reason in `skipped`."""
    skipped = {} if skipped is None else skipped
    if source.listing:
        return _read_listing(source, skipped)
    fs, root = fsspec.core.url_to_fs(source.url, **source.fs_options())
    if not fs.isdir(root):
        raise SourceNotFound(f"crawl source directory does not exist: {source.url}")
    found = set()
    for pattern in source.patterns:
        found.update(path for path in fs.find(root) if fnmatch.fnmatch(posixpath.basename(path), pattern))
    if _remote(fs):
        return sorted(fs.unstrip_protocol(path) for path in found)
    for path in list(found):
        problem = _not_a_regular_file(path)
        if problem:
            skipped[path] = problem
            found.discard(path)
    return sorted(found)


def _not_a_regular_file(path: str) -> str | None:
    """Why a local path is no crawl file, or None: `fs.find` does not follow symbolic links to
    folders, but a link to a file is followed here, and a loop or a dangling link is named."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"unreadable ({'symbolic link loop' if exc.errno == errno.ELOOP else exc.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file"


def _read_listing(source: SourceSettings, skipped: dict[str, str]) -> list[str]:
    try:
        with fsspec.open(source.listing, "rb", **source.fs_options()) as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise SourceNotFound(f"crawl listing does not exist: {source.listing}") from exc
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    base = source.listing_base_url.rstrip("/")
    paths = set()
    for line in data.decode(errors="replace").splitlines():
        path = line.strip()
        problem = _unsafe_listing_line(path, bool(base))
        if problem:
            skipped[path] = problem
        elif path:
            paths.add(f"{base}/{path.lstrip('/')}" if base else path)
    return sorted(paths)


def _unsafe_listing_line(path: str, relative: bool) -> str | None:
    """A listing line must name a file below the base URL: no `..` segment, no control
    characters, and no URL of its own when a base is set."""
    if any(ord(c) < 32 for c in path):
        return "control characters in a listing line"
    if ".." in re.split(r"[/\\]", path):
        return "a '..' segment would leave the listing's base"
    if relative and "://" in path:
        return "a full URL where the listing's base URL is prepended"
    return None


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

    def _spec_path(self, key: str) -> str:
        return self.store.path(BATCHES_DIR, f"{check_name('crawl batch', key)}.json")

    def register(self, batches: list[CrawlBatch]) -> None:
        """Specs first, index last: a crash in between leaves specs the index does not name
        yet, and the next tick, seeing their files as new, writes them again under the same keys.
        The Dagster partitions come after both (the sensor adopts registered batches that are
        not partitions yet, so a crash before they were added loses nothing)."""
        if not batches:
            return
        for batch in batches:
            self.store.write_json(self._spec_path(batch.key), batch.spec())
        index = self.index()
        for batch in batches:
            index.update(dict.fromkeys(batch.files, batch.key))
        self.store.write_json(self._index_path(), index)

    def spec(self, key: str) -> dict:
        path = self._spec_path(key)
        if not self.store.fs.exists(path):
            raise KeyError(f"crawl batch {key!r} is not registered (no {path})")
        return self.store.read_json(path)

    def batch_keys(self) -> list[str]:
        """Every registered batch, in the order of their files (the order batches are planned in)."""
        return list(dict.fromkeys(key for _, key in sorted(self.index().items())))

    def all_specs(self) -> dict[str, dict]:
        specs = {}
        for path in self.store.fs.glob(self.store.path(BATCHES_DIR, "*.json")):
            if posixpath.basename(path) != INDEX_NAME:
                spec = self.store.read_json(path)
                specs[spec["key"]] = spec
        return specs

    def discover(self, source: SourceSettings, offered: list[str]) -> list[CrawlBatch]:
        """Batches for the files the source offers (`list_crawl_files`) that no batch holds yet
        (at most `max_files_per_tick` files, so one tick over a fresh 90k-file crawl stays short)."""
        index = self.index()
        new_files = [path for path in offered if path not in index]
        new_files = new_files[: source.max_files_per_tick]
        taken = set(index.values())
        return plan_batches(new_files, source.files_per_partition, source.crawl, taken)
