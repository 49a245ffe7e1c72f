"""bench/chaos.py at suite size: the chain under the real daemon, its run SIGKILLed during ingest,
inside deduplication and inside training (the `gpu` pool's slot held), each from a fresh start;
every time run monitoring marks the dead run failed, frees its slot, run retries and automation
finish the chain, and the outputs equal an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import KillPoint, Setup, run_point, run_reference, table
from jobs.demo import daemon_log

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

POINTS = ("raw_documents@0", "deduplicated_documents@50", "checkpoint@50")


@pytest.mark.timeout(2400)  # four daemon passes of the whole chain: ~2 min each on 2 idle cores
def test_runs_killed_in_three_stages_recover_to_the_reference(
    tmp_path: Path, vllm_server: str, tiny_model: Path
) -> None:
    setup = Setup(tmp_path, vllm_server, tiny_model, timeout_s=900)
    reference = run_reference(setup)
    assert any(key.startswith("bits_per_byte/") for key in reference.expected), reference.expected
    assert daemon_log(reference.chain.home).stat().st_size > 0  # the daemon's output is kept
    outcomes = [run_point(setup, KillPoint.parse(name), reference) for name in POINTS]
    assert all(outcome.survived for outcome in outcomes), table(outcomes)
    assert all(not outcome.landed.startswith("(") for outcome in outcomes), table(outcomes)  # killed inside a step
    assert all(outcome.retried for outcome in outcomes), table(outcomes)  # by run retries, from the failed step
