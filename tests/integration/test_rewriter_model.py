"""The rewriting model as an asset: the tiny model published with its content hash as data version,
and a configured path that is missing or not a model failing in that step, with the path in the
message, nothing downstream run and the published model untouched."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from assets.rewrite import REWRITER_MODEL, SYNTHETIC
from definitions import build_definitions
from resources.common.model_store import fetch_model
from resources.common.storage import ShardStore
from resources.settings import Settings
from tests.conftest import chain_settings, one_file_crawl


def _settings(tmp_path: Path, model: dict[str, str]) -> Settings:
    return chain_settings(tmp_path, one_file_crawl(tmp_path), rewrite={"model": model})


def _materialize(settings: Settings, instance: dg.DagsterInstance, names: set[str], partition: str | None = None):
    defs = build_definitions(settings)
    return dg.materialize(
        defs.assets or [],
        selection=sorted(names),
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        raise_on_error=False,
    )


def test_tiny_model_is_published_with_its_content_hash(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    settings = _settings(tmp_path, {"source": "tiny"})
    first = _materialize(settings, instance, {REWRITER_MODEL})
    assert first.success
    store = ShardStore(settings.storage.root)
    model_dir, manifest = fetch_model(store, REWRITER_MODEL)
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    event = instance.get_latest_materialization_event(dg.AssetKey(REWRITER_MODEL))
    assert event.asset_materialization.tags["dagster/data_version"] == manifest.data_version
    assert event.asset_materialization.metadata["model_type"].value == "llama"

    again = _materialize(settings, instance, {REWRITER_MODEL})  # rebuilt from scratch: the same bytes
    assert again.success
    assert store.read_manifest(REWRITER_MODEL, None).data_version == manifest.data_version


def test_bad_model_path_fails_its_step_and_touches_nothing(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    good = _settings(tmp_path, {"source": "tiny"})
    assert _materialize(good, instance, {REWRITER_MODEL}).success
    store = ShardStore(good.storage.root)
    published = store.read_manifest(REWRITER_MODEL, None)
    instance.add_dynamic_partitions("crawl_batches", ["batch-0"])

    (tmp_path / "not_a_model").mkdir()
    for bad, reason in [(tmp_path / "missing", "does not exist"), (tmp_path / "not_a_model", "no config.json")]:
        raw = good.model_dump()
        raw["rewrite"]["model"] = {"source": "hf_dir", "path": str(bad)}
        result = _materialize(Settings.model_validate(raw), instance, {REWRITER_MODEL, SYNTHETIC}, "batch-0")
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_key == REWRITER_MODEL
        message = failure.step_failure_data.error.cause.message  # the ModelPathError under Dagster's wrapper
        assert str(bad) in message and reason in message
        assert not [e for e in result.all_events if e.is_step_start and e.step_key == SYNTHETIC]  # never started
        assert store.read_manifest(REWRITER_MODEL, None) == published
        assert all(Path(store.partition_dir(REWRITER_MODEL, None), f.path).is_file() for f in published.files)


def test_a_file_that_is_not_gguf_fails_the_model_step(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    foreign = tmp_path / "SmolLM2.gguf"
    foreign.write_text("<html>404 Not Found</html>")
    settings = _settings(tmp_path, {"source": "gguf", "path": str(foreign)})
    result = _materialize(settings, instance, {REWRITER_MODEL})
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.cause.message
    assert str(foreign) in message and "is not a GGUF file" in message
    assert ShardStore(settings.storage.root).read_manifest(REWRITER_MODEL, None) is None
