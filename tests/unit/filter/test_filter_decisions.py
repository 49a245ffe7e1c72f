"""The filter stage decides exactly as the implementation before the compiled kernels did: on every
web-warc document, under two configurations, the same kept rows (language, score, text) and the
same removal keys and details (see filter_decisions.py for how the fixture was recorded)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.unit.filter.filter_decisions import FIXTURE, WEB_WARC, WIKITEXT, decisions, web_warc_documents


@pytest.mark.skipif(not (WEB_WARC.is_dir() and WIKITEXT.is_file()), reason="shared corpus not available")
def test_same_decisions_as_the_recorded_implementation(tmp_path: Path) -> None:
    recorded = pl.read_parquet(FIXTURE)
    now = decisions(web_warc_documents(), tmp_path)
    assert now.height == recorded.height == 2 * 972
    assert_frame_equal(now, recorded, check_exact=True)
