"""Stage engines for test_ray_executor.py's Ray workers, in a module of their own: a worker
imports the module of every function it runs, and the test module imports all of Dagster."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import polars as pl

from resources.common.partition_stage import Process
from resources.common.schemas import removed_rows


def dying_filter(marker: str) -> Process:
    """Keeps even-length texts; the worker dies (SIGKILL) on the shard holding "kill me", the
    first time only: `marker` records the death and the worker's pid."""

    def process(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        if "kill me" in frame.get_column("text").to_list() and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        odd = frame.get_column("text").str.len_chars() % 2 == 1
        return frame.filter(~odd), removed_rows(frame.filter(odd), "test", "test_odd_length", "odd")

    return process
