"""Shard storage over fsspec with atomic writes and per-partition manifests.

The manifest is the commit point of a partition: shards are written first under
content-addressed names, the manifest last, and readers only ever open files a
manifest names. A run killed half-way therefore leaves the previous manifest (and
its shards) intact, and stray new shards are invisible and collected on the next
commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec
import polars as pl
from pydantic import Field, field_validator

from resources.common.config import Section
from resources.common.partition_lock import LOCKS_DIR, lease_lock, local_lock
from resources.common.schemas import DOCUMENTS

MANIFEST_NAME = "_manifest.json"
UNPARTITIONED = "__all__"
TMP_PREFIX = ".tmp-"
_MANIFEST_BATCH = 256
# An asset name or partition key becomes one path component: letters, digits, `.`, `_`, `-`; never
# starting with a dot (no `..`, no hidden names), never a separator, at most 200 characters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class UnsafeName(ValueError):
    """An asset name or partition key that cannot safely become a path component."""


def check_name(kind: str, name: str) -> str:
    """`name` if it is one safe path component; a clear error before anything is written otherwise
    (a key like `../raw_documents/x` would make one asset overwrite another's files)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UnsafeName(
            f"{kind} {name!r} cannot be used as a storage path: use letters, digits, '.', '_' and '-' only, "
            "not starting with '.', at most 200 characters"
        )
    return name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-able object that does not depend on key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode())


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the partition directory
    rows: int
    bytes: int
    sha256: str
    table: str = DOCUMENTS


@dataclass
class Manifest:
    asset: str
    partition: str
    files: list[ShardInfo]
    config_hash: str = ""
    code_version: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # upstream "asset[partition]" -> data version
    stats: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    created_at: str = ""

    @property
    def rows(self) -> int:
        return self.rows_of(DOCUMENTS)

    def rows_of(self, table: str) -> int:
        return sum(f.rows for f in self.files if f.table == table)

    def tables(self) -> set[str]:
        return {f.table for f in self.files}

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def data_version(self) -> str:
        """Hash of the content only: identical shards give an identical version, so a rerun
        that produces the same bytes does not make anything downstream stale."""
        return stable_hash(
            {"asset": self.asset, "partition": self.partition, "files": [asdict(f) for f in self.files]}
        )[:32]

    def to_json(self) -> str:
        body = asdict(self)
        body["data_version"] = self.data_version
        return json.dumps(body, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        body.pop("data_version", None)
        body["files"] = [ShardInfo(**f) for f in body["files"]]
        return cls(**body)


# Option names that carry secrets (fsspec's s3fs/gcsfs/adlfs and botocore spellings).
_SECRET_OPTION = re.compile(r"^key$|secret|password|passwd|token|credential|access_key|account_key")


def refuse_credentials(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Credentials written into settings end up in what the UI serves and in run records: refuse
    them, naming the key, and say where they go instead."""
    for name, value in options.items():
        if _SECRET_OPTION.search(str(name).lower()):
            raise ValueError(
                f"{where}.{name}: credentials are not accepted in settings (they would be shown in the Dagster "
                "UI and kept in run records); leave them to the standard AWS environment variables, or name "
                "environment variables in `credentials_env` (e.g. {key: MY_KEY_VAR, secret: MY_SECRET_VAR})"
            )
        if isinstance(value, dict):
            refuse_credentials(value, f"{where}.{name}")
    return options


def refuse_url_credentials(url: str | None, where: str) -> str | None:
    """A URL with a password in it (`s3://key:secret@bucket`, `https://user:pass@host`) is refused
    for the same reason: URLs are shown in descriptions, logs and metadata."""
    if url and "://" in url and urlsplit(url).password is not None:
        raise ValueError(f"{where}: a password in the URL is not accepted; use `credentials_env`")
    return url


class CredentialsEnv(Section):
    """Names of environment variables holding an object store's credentials (fsspec's `key`,
    `secret`, `token`): only the names are configuration; the values are read when a file system
    is opened, so they never appear in settings, the UI, manifests or logs."""

    key: str | None = None
    secret: str | None = None
    token: str | None = None

    def resolve(self) -> dict[str, str]:
        options = {}
        for option, variable in self.model_dump(exclude_none=True).items():
            if variable not in os.environ:
                raise KeyError(f"environment variable {variable} (credentials_env.{option}) is not set")
            options[option] = os.environ[variable]
        return options


class StorageSettings(Section):
    """Where shards and manifests live: a local directory or an s3:// prefix."""

    root: str = ".data"
    storage_options: dict[str, object] = Field(default_factory=dict, description="fsspec options, no credentials")
    credentials_env: CredentialsEnv = Field(default_factory=CredentialsEnv)
    lock_timeout_s: float = Field(
        default=600.0, gt=0, description="how long a step waits for another run writing the same partition"
    )
    lock_lease_s: float = Field(
        default=300.0, ge=10, description="object stores: a writer's lease, renewed while it works"
    )

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, object]) -> dict[str, object]:
        return refuse_credentials(options, "storage.storage_options")

    @field_validator("root")
    @classmethod
    def _no_password(cls, root: str) -> str:
        return refuse_url_credentials(root, "storage.root")

    def store(self) -> ShardStore:
        return ShardStore(
            self.root,
            {**self.storage_options, **self.credentials_env.resolve()},
            lock_timeout_s=self.lock_timeout_s,
            lock_lease_s=self.lock_lease_s,
        )


class ShardStore:
    """An fsspec directory tree: `<root>/<asset>/<partition>/{part-*.parquet,removed-*.parquet,_manifest.json}`."""

    def __init__(
        self,
        root: str,
        storage_options: dict[str, Any] | None = None,
        *,
        lock_timeout_s: float = 600.0,
        lock_lease_s: float = 300.0,
    ) -> None:
        self.root = root.rstrip("/")
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        self._is_local = "file" in _protocols(self.fs)
        if self._is_local:
            self.fs.makedirs(self._root_path, exist_ok=True)
        self.lock_timeout_s, self.lock_lease_s = lock_timeout_s, lock_lease_s
        # When this store began writing each partition it holds the lock of: temporary files older
        # than that belong to a writer that died, and the commit removes them.
        self._writing_since: dict[tuple[str, str], float] = {}
        self._created = time.time()

    @property
    def is_local(self) -> bool:
        return self._is_local

    # -- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return posixpath.join(self._root_path, *parts)

    def url(self, *parts: str) -> str:
        """A path in the form users paste into other tools (s3://... or a local path)."""
        path = self.path(*parts)
        return path if self._is_local else self.fs.unstrip_protocol(path)

    def partition_dir(self, asset: str, partition: str | None) -> str:
        """`<root>/<asset>/<partition>`: both checked to be single safe path components, and the
        result checked to stay inside the asset's folder (symbolic links resolved, locally)."""
        asset_dir = self.path(check_name("asset", asset))
        key = UNPARTITIONED if partition is None else partition
        directory = posixpath.join(asset_dir, check_name("partition key", key))
        inside = posixpath.normpath(directory).startswith(posixpath.normpath(asset_dir) + "/")
        if self._is_local and inside:
            inside = os.path.realpath(directory).startswith(os.path.realpath(asset_dir) + os.sep)
        if not inside:
            raise UnsafeName(f"partition key {partition!r} resolves outside {asset_dir}")
        return directory

    # -- one writer per partition ------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, asset: str, partition: str | None, owner: str, log: Callable[[str], None] = print):
        """Hold the partition's lock while writing and committing it (see `partition_lock`):
        another run writing the same partition is waited for, at most `lock_timeout_s`."""
        key = (asset, UNPARTITIONED if partition is None else partition)
        self.partition_dir(asset, partition)  # a bad key fails before any lock file is made
        what = f"{asset}[{key[1]}]"
        lock = self.path(LOCKS_DIR, asset, f"{key[1]}.lock")
        if self._is_local:
            held = local_lock(Path(lock), owner, self.lock_timeout_s, what, log)
        else:
            held = lease_lock(self.fs, lock, owner, self.lock_timeout_s, self.lock_lease_s, what, log)
        with held:
            self._writing_since[key] = time.time()
            try:
                yield self
            finally:
                del self._writing_since[key]

    # -- atomic writes -----------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Atomic: a local write goes to a temporary name and is renamed; an object store PUT
        is atomic by itself."""
        self._put(path, lambda target: self.fs.pipe_file(target, data))

    def write_file(self, path: str, local: Path) -> None:
        """`write_bytes` for a local file of any size: streamed, never held in memory."""
        self._put(path, lambda target: self.fs.put_file(str(local), target))

    def _put(self, path: str, put: Callable[[str], object]) -> None:
        """`put(target)` straight to `path` on an object store; locally to a temporary name
        beside it, renamed into place (or removed, whatever happens)."""
        if not self._is_local:
            put(path)
            return
        parent = posixpath.dirname(path)
        self.fs.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(path)}")
        try:
            put(tmp)
            self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    # -- shards and manifests ----------------------------------------------------------
    def write_parquet_shard(
        self, asset: str, partition: str | None, index: int, frame: pl.DataFrame, table: str = DOCUMENTS
    ) -> ShardInfo:
        """Content-addressed name, so identical content keeps an identical manifest."""
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd", compression_level=3, statistics=True)
        data = buffer.getvalue()
        digest = sha256_bytes(data)
        prefix = "part" if table == DOCUMENTS else table
        name = f"{prefix}-{index:05d}-{digest[:16]}.parquet"
        self.write_bytes(posixpath.join(self.partition_dir(asset, partition), name), data)
        return ShardInfo(path=name, rows=frame.height, bytes=len(data), sha256=digest, table=table)

    def commit(self, manifest: Manifest, collect: bool = True) -> Manifest:
        """Publish a partition: write its manifest, then (unless `collect` is off, for assets that
        keep a history, like checkpoints) drop shards no manifest names, and temporary files left
        by a writer that died (older than this store's writing of the partition)."""
        manifest.created_at = manifest.created_at or datetime.now(UTC).isoformat()
        directory = self.partition_dir(manifest.asset, manifest.partition)
        self.write_bytes(posixpath.join(directory, MANIFEST_NAME), manifest.to_json().encode())
        if not collect:
            return manifest
        keep = {f.path.split("/", 1)[0] for f in manifest.files} | {MANIFEST_NAME}  # files or whole folders
        since = self._writing_since.get((manifest.asset, manifest.partition or UNPARTITIONED), self._created)
        self.fs.invalidate_cache(directory)
        for entry in self.fs.ls(directory, detail=True):
            name = posixpath.basename(entry["name"].rstrip("/"))
            if name in keep:
                continue
            if name.startswith(TMP_PREFIX) and _modified(entry) >= since:
                continue  # maybe another write of this process, still going
            self.fs.rm(entry["name"], recursive=True)
        return manifest

    def read_manifest(self, asset: str, partition: str | None) -> Manifest | None:
        path = posixpath.join(self.partition_dir(asset, partition), MANIFEST_NAME)
        if not self.fs.exists(path):
            return None
        return Manifest.from_json(self.read_bytes(path).decode())

    def partition_keys(self, asset: str) -> list[str]:
        """The partitions of an asset that have a manifest, from one listing (no manifest read)."""
        paths = self.fs.glob(self.path(asset, "*", MANIFEST_NAME))
        return sorted(posixpath.basename(posixpath.dirname(path)) for path in paths)

    def iter_manifests(self, asset: str | None = None) -> Iterator[Manifest]:
        """Every manifest (of one asset), in path order; read in concurrent batches on object stores,
        where one GET per manifest in turn would cost a round trip each."""
        paths = sorted(self.fs.glob(self.path(asset or "*", "*", MANIFEST_NAME)))
        for start in range(0, len(paths), _MANIFEST_BATCH):
            contents = self.fs.cat(paths[start : start + _MANIFEST_BATCH])
            for path in sorted(contents):
                yield Manifest.from_json(contents[path].decode())

    def shard_paths(self, manifest: Manifest, table: str = DOCUMENTS) -> list[str]:
        directory = self.partition_dir(manifest.asset, manifest.partition)
        return [posixpath.join(directory, f.path) for f in manifest.files if f.table == table]

    def read_shard(self, path: str, columns: list[str] | None = None) -> pl.DataFrame:
        with self.fs.open(path, "rb") as f:
            return pl.read_parquet(f, columns=columns)

    def shard_schema(self, manifest: Manifest, table: str = DOCUMENTS) -> list[str]:
        """Column names of a table's shards (all shards of a table share one schema); none when
        the partition wrote no shard of that table (an empty crawl batch)."""
        paths = self.shard_paths(manifest, table)
        if not paths:
            return []
        with self.fs.open(paths[0], "rb") as f:
            return list(pl.read_parquet_schema(f))

    def scan(self, manifest: Manifest, table: str = DOCUMENTS) -> pl.LazyFrame:
        """A lazy scan of a table: filters run inside the Parquet reader on local storage; on an
        object store the shards are read whole (polars' own S3 client does not share fsspec's
        settings), one table at a time."""
        paths = self.shard_paths(manifest, table)
        if self._is_local:
            return pl.scan_parquet(paths) if paths else pl.LazyFrame()
        return pl.concat([self.read_shard(path) for path in paths]).lazy() if paths else pl.LazyFrame()

    # -- local mirrors: for tools that only open local paths (memory maps, PyTorch, fastText) --
    def local_dir(self, asset: str, partition: str | None) -> Path:
        """Where a partition's files are on local disk: the partition itself when the store is
        local; otherwise a mirror under `$CRAWL2CKPT_CACHE` (default: the temp directory), keyed
        by the store's URL, which survives a killed run so a restarted one resumes from it."""
        if self._is_local:
            return Path(self.partition_dir(asset, partition))
        cache = Path(os.environ.get("CRAWL2CKPT_CACHE") or tempfile.gettempdir()) / "crawl2ckpt-cache"
        self.partition_dir(asset, partition)  # the mirror's path is checked like the partition's
        return cache / hashlib.sha256(self.root.encode()).hexdigest()[:12] / asset / (partition or UNPARTITIONED)

    def local_partition(self, manifest: Manifest) -> Path:
        """`local_dir` with every file the manifest names present: downloaded once (to a temporary
        name, then renamed, so a partial download is never taken for a file)."""
        root = self.local_dir(manifest.asset, manifest.partition)
        if self._is_local:
            return root
        directory = self.partition_dir(manifest.asset, manifest.partition)
        for info in manifest.files:
            local = root / info.path
            if not local.resolve().is_relative_to(root.resolve()):
                raise UnsafeName(
                    f"{manifest.asset}[{manifest.partition}]: manifest names a file outside it: {info.path}"
                )
            if local.exists() and local.stat().st_size == info.bytes:
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".part-{uuid.uuid4().hex}-{local.name}")
            self.fs.get_file(posixpath.join(directory, info.path), str(tmp))
            tmp.replace(local)
        return root

    def publish_files(
        self, asset: str, partition: str | None, local_root: Path, files: list[Path], table: str
    ) -> list[ShardInfo]:
        """Files of a local mirror as shards of the partition, at their paths relative to
        `local_root`: copied into the store when it is remote (a local store's mirror is the
        partition itself). Each file is read once, for its hash and its upload."""
        directory = self.partition_dir(asset, partition)
        shards = []
        for file in files:
            data, relative = file.read_bytes(), file.relative_to(local_root).as_posix()
            if not self._is_local:
                self.write_bytes(posixpath.join(directory, relative), data)
            shards.append(ShardInfo(path=relative, rows=0, bytes=len(data), sha256=sha256_bytes(data), table=table))
        return shards

    def iter_frames(
        self, manifest: Manifest, columns: list[str] | None = None, table: str = DOCUMENTS
    ) -> Iterator[pl.DataFrame]:
        """One shard at a time, so memory stays bounded by the shard size."""
        for path in self.shard_paths(manifest, table):
            yield self.read_shard(path, columns)


def _modified(entry: dict[str, Any]) -> float:
    """A listing entry's modification time (local: `mtime`; object stores write no temporaries)."""
    return float(entry.get("mtime") or 0.0)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
