"""When `make demo` (and the chaos benchmark, and the end-to-end tests) decide that automation has
nothing left to run: from the automation sensor's latest ticks, as Dagster records them; and their
watch does not die of a SQLite instance that the daemon holds locked for a moment."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorTick, TickData, TickStatus
from dagster_shared.error import SerializableErrorInfo

from jobs.automation import AUTOMATION_SENSOR
from jobs.demo import idle_after, patiently


def ticks(*specs: tuple[TickStatus, float]) -> list[InstigatorTick]:
    """Ticks newest first, each (status, start time)."""
    return [
        InstigatorTick(
            number,
            TickData(
                "origin",
                AUTOMATION_SENSOR,
                InstigatorType.SENSOR,
                status,
                started,
                run_ids=["a-run"] if status == TickStatus.SUCCESS else [],
                error=SerializableErrorInfo("condition raised", [], "ValueError")
                if status == TickStatus.FAILURE
                else None,
            ),
        )
        for number, (status, started) in enumerate(specs)
    ]


def test_a_skipped_tick_after_the_last_run_means_idle() -> None:
    assert idle_after(ticks((TickStatus.SKIPPED, 20.0), (TickStatus.SUCCESS, 5.0)), moment=10.0) is True


def test_a_tick_that_requested_runs_after_a_skipped_one_means_work() -> None:
    """The run it launched may not be visible yet: the skipped tick before it proves nothing."""
    assert idle_after(ticks((TickStatus.SUCCESS, 30.0), (TickStatus.SKIPPED, 20.0)), moment=10.0) is False


def test_ticks_from_before_the_last_run_ended_say_nothing() -> None:
    assert idle_after(ticks((TickStatus.SKIPPED, 9.0)), moment=10.0) is False
    assert idle_after(ticks((TickStatus.STARTED, 30.0), (TickStatus.SKIPPED, 9.0)), moment=10.0) is False


def test_a_tick_still_evaluating_defers_to_the_one_before() -> None:
    assert idle_after(ticks((TickStatus.STARTED, 30.0), (TickStatus.SKIPPED, 20.0)), moment=10.0) is True


def test_a_failed_tick_says_why() -> None:
    assert "condition raised" in idle_after(ticks((TickStatus.FAILURE, 20.0)), moment=10.0)


@pytest.fixture
def locked_database(tmp_path: Path):
    """A rollback-journal SQLite file held by another connection's exclusive transaction, and a
    reader with a short busy timeout: it fails with "database is locked" until `release()`."""
    path = tmp_path / "instance.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE runs (id TEXT)")
        setup.execute("INSERT INTO runs VALUES ('a-run')")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})

    def read(table: str = "runs") -> list[str]:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(sqlalchemy.text(f"SELECT id FROM {table}"))]

    yield read, lambda: holder.execute("COMMIT")
    holder.close()
    engine.dispose()


def test_a_read_waits_out_a_locked_instance(locked_database) -> None:
    read, release = locked_database
    with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
        read()
    threading.Timer(1.5, release).start()
    started = time.monotonic()
    assert patiently(read) == ["a-run"]
    assert time.monotonic() - started >= 1.0


def test_a_lock_held_past_patience_and_other_errors_are_raised(locked_database) -> None:
    read, release = locked_database
    started = time.monotonic()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
        patiently(read, patience_s=1.5)
    assert time.monotonic() - started < 10
    release()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="no such table"):
        patiently(lambda: read("no_such_table"))
