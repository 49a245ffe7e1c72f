"""What the filter tests share: real pages from the shipped sample."""

from __future__ import annotations

import polars as pl
import pytest

from resources.common.storage import ShardInfo
from resources.ingest.engine import ingest_files
from resources.settings import IngestSettings
from tests.conftest import SAMPLE_DIR


def sample_pages(name: str = "CC-SAMPLE-2024-22-00000.warc.gz") -> list[str]:
    """Real pages: a shipped sample WARC file through our own ingest (in-process, ~0.3 s)."""
    frames: list[pl.DataFrame] = []

    def keep(index: int, frame: pl.DataFrame) -> ShardInfo:
        frames.append(frame)
        return ShardInfo(path=str(index), rows=frame.height, bytes=0, sha256="")

    ingest_files([str(SAMPLE_DIR / name)], crawl_batch="test", settings=IngestSettings(workers=1), write_shard=keep)
    return pl.concat(frames)["text"].to_list()


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    return sample_pages()
