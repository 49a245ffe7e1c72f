"""One writer per asset partition, across processes and machines.

Two runs writing the same partition at once would each collect the other's fresh shards when
they commit (collection removes files its own manifest does not name), leaving a manifest that
names deleted files. So a step holds the partition's lock from its first write to its commit.

- Local storage: `fcntl.flock` on `<root>/.locks/<asset>/<partition>.lock`. The kernel releases
  it when the holder dies, SIGKILL included, so a dead run never blocks the next one.
- Object stores: a lease object at the same place, created only if absent (a conditional PUT,
  `If-None-Match: *`), holding who took it and until when. A holder renews it while it works;
  a lease past its expiry, or one taken on this machine by a process that no longer exists, is
  taken over.

A waiter says whom it waits for, and gives up after `timeout_s` with an error naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec

LOCKS_DIR = ".locks"
_POLL_S = 0.2
_REPORT_EVERY_S = 30.0


class PartitionLocked(RuntimeError):
    """Another writer held the partition for longer than the configured wait."""


def holder_info(owner: str, lease_s: float | None = None) -> dict[str, Any]:
    now = time.time()
    info = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": _iso(now)}
    if lease_s is not None:
        info["expires"] = now + lease_s
    return info


def describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another writer"
    return f"{info.get('owner') or 'a writer'} (pid {info.get('pid')} on {info.get('host')}, since {info.get('since')})"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def local_lock(path: Path, owner: str, timeout_s: float, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """`flock` on `path`, polled until `timeout_s`; the holder's description is written into the
    file so that a waiter can say whom it waits for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait(lambda: _try_flock(fd), lambda: _read_local(path), timeout_s, what, log)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info(owner)).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_local(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def lease_lock(
    fs: fsspec.AbstractFileSystem,
    path: str,
    owner: str,
    timeout_s: float,
    lease_s: float,
    what: str,
    log: Callable[[str], None],
) -> Iterator[None]:
    """A lease object on an object store, renewed every `lease_s / 3` while held."""
    mine = holder_info(owner, lease_s)

    def acquire() -> bool:
        current = _read_lease(fs, path)
        if current is not None and not _stale(current):
            return False
        if current is not None:
            log(f"{what}: taking over the stale lease of {describe(current)}")
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(path)
        try:
            fs.pipe_file(path, json.dumps(mine).encode(), mode="create")
        except (FileExistsError, OSError):  # another waiter created it first (412 Precondition Failed)
            return False
        return _read_lease(fs, path) == mine

    _wait(acquire, lambda: _read_lease(fs, path), timeout_s, what, log)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            mine["expires"] = time.time() + lease_s
            fs.pipe_file(path, json.dumps(mine).encode())

    renewer = threading.Thread(target=renew, name=f"lease {path}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        if _read_lease(fs, path) == mine:
            fs.rm_file(path)


def _read_lease(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except ValueError:  # a lease cut short cannot be anybody's: treat it as expired
        return {"expires": 0}


def _stale(lease: dict[str, Any]) -> bool:
    """Past its expiry, or taken on this machine by a process that is gone."""
    if float(lease.get("expires", 0)) < time.time():
        return True
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def _wait(
    acquire: Callable[[], bool],
    holder: Callable[[], dict[str, Any] | None],
    timeout_s: float,
    what: str,
    log: Callable[[str], None],
) -> None:
    started = time.monotonic()
    reported = -_REPORT_EVERY_S
    while not acquire():
        waited = time.monotonic() - started
        if waited >= timeout_s:
            raise PartitionLocked(
                f"{what} is being written by {describe(holder())}; gave up after {timeout_s:g} s "
                "(storage.lock_timeout_s). Two runs must not write one partition at once: let the other finish."
            )
        if waited - reported >= _REPORT_EVERY_S:
            reported = waited
            log(f"{what}: waiting for {describe(holder())}, which is writing it")
        time.sleep(_POLL_S)
