"""A real PostgreSQL server for a test: Debian's `initdb` + `pg_ctl` in a temporary directory,
listening on 127.0.0.1 on a free port (no Unix socket outside that directory), with a password
user and an empty database; stopped and removed afterwards.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the server runs as
the `postgres` system user the Debian package creates, via `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD, DATABASE = "crawl2ckpt", "pg-test-password", "dagster"


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str
    database: str

    def environ(self) -> dict[str, str]:
        """The variables configs/dagster-postgres.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.database,
        }


def server_binaries() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or Debian's versioned folder."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_server() -> Iterator[Postgres]:
    binaries = server_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries not found: .ci/run installs Debian's postgresql package")
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    # Not under pytest's tmp_path: its parent is private to root, and the server user must reach it.
    workdir = Path(tempfile.mkdtemp(prefix="crawl2ckpt-pg-"))
    data, password_file = workdir / "data", workdir / "password"
    password_file.write_text(PASSWORD)
    if as_root:
        owner = pwd.getpwnam("postgres")
        for path in (workdir, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")

    run(str(binaries / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}",
        "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-instructions")  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={workdir}"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(workdir / "server.log"), "-w", "start")
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        connection.close()
        yield Postgres("127.0.0.1", port, USER, PASSWORD, DATABASE)
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)
