"""Shared fixtures: a real sqlite Dagster instance, a crawl source directory and settings
pointing every path at the test's temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from resources.settings import PROJECT_ROOT, Settings

pytest_plugins = ("tests.vllm_fixtures",)

SAMPLE_DIR = PROJECT_ROOT / "data" / "sample"
SHARED_CORPORA = PROJECT_ROOT.parent / "shared" / "corpora"


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


@pytest.fixture
def crawl_dir(tmp_path: Path) -> Path:
    """A fresh copy of the shipped sample, so tests may add or remove files."""
    target = tmp_path / "crawl"
    shutil.copytree(SAMPLE_DIR, target)
    return target


def make_settings(tmp_path: Path, crawl_dir: Path, **ingest: object) -> Settings:
    return Settings.model_validate(
        {
            "storage": {"root": str(tmp_path / "store")},
            "catalog": {"path": str(tmp_path / "catalog.duckdb")},
            "source": {"url": str(crawl_dir), "files_per_partition": 2},
            "ingest": {"workers": 1, **ingest},
        }
    ).resolved()


@pytest.fixture
def settings(tmp_path: Path, crawl_dir: Path) -> Settings:
    return make_settings(tmp_path, crawl_dir)


def chain_settings(tmp_path: Path, crawl: Path, **sections: dict[str, object]) -> Settings:
    """Settings for running the real chain on a small crawl: every path under `tmp_path`, one
    worker, a quality classifier (trained on the shipped reference text) that keeps everything,
    dedup that never waits. `sections` replace keys of a section (e.g. `training={...}`)."""
    raw: dict[str, dict[str, object]] = {
        "storage": {"root": str(tmp_path / "store")},
        "catalog": {"path": str(tmp_path / "catalog.duckdb")},
        "source": {"url": str(crawl)},
        "ingest": {"workers": 1},
        "quality": {
            "classifier": {"reference_files": ["data/reference/wikitext2_reference.txt"], "keep_threshold": 0.0}
        },
        "dedup": {"wait_retries": 0, "near": {"workers": 1}},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return Settings.model_validate(raw).resolved()


def one_file_crawl(tmp_path: Path) -> Path:
    """A crawl directory holding the first file of the shipped sample."""
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    shutil.copy(sorted(SAMPLE_DIR.iterdir())[0], crawl)
    return crawl
