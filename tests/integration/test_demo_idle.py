"""When `make demo` (and the chaos benchmark, and the end-to-end tests) decide that automation has
nothing left to run: from the automation sensor's latest ticks, as Dagster records them."""

from __future__ import annotations

from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import InstigatorTick, TickData, TickStatus
from dagster_shared.error import SerializableErrorInfo

from jobs.automation import AUTOMATION_SENSOR
from jobs.demo import idle_after


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
