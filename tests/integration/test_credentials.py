"""S3 credentials only from the environment: an ingest on S3 (moto on loopback) with credentials
named by `credentials_env`, and afterwards the secret appears nowhere the UI serves (the
repository snapshot with the resources' configuration, run configs, event logs), in manifests,
batch specs, the catalog or the logs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from definitions import build_definitions
from resources.settings import Settings
from tests.automation_driver import materialize, new_batches, tick_sensor
from tests.conftest import SAMPLE_DIR
from tests.unit.common.test_storage import s3_endpoint  # noqa: F401 - the moto server fixture

KEY, SECRET = "AKIALAKEKEY000TEST", "s3cr3t-never-to-be-shown-42"


def test_secret_from_the_environment_is_never_written(
    tmp_path: Path,
    instance: dg.DagsterInstance,
    s3_endpoint: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "use_listings_cache": False}
    admin = s3fs.S3FileSystem(**options)
    admin.mkdir("lake")
    admin.mkdir("crawls")
    admin.put_file(str(sorted(SAMPLE_DIR.iterdir())[0]), "crawls/CC-SAMPLE-2024-22/CC-SAMPLE-2024-22-00000.warc.gz")
    # Only the named variables hold credentials: without them nothing could sign a request.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("LAKE_KEY", KEY)
    monkeypatch.setenv("LAKE_SECRET", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    access = {"storage_options": options, "credentials_env": {"key": "LAKE_KEY", "secret": "LAKE_SECRET"}}
    settings = Settings.model_validate(
        {
            "storage": {"root": "s3://lake/c2c", **access},
            "catalog": {"path": str(tmp_path / "catalog.duckdb")},
            "source": {"url": "s3://crawls/CC-SAMPLE-2024-22", **access},
            "ingest": {"workers": 1},
        }
    ).resolved()
    defs = build_definitions(settings)
    (key,) = new_batches(tick_sensor(defs, instance))
    result = materialize(defs, instance, ["raw_documents"], key)
    assert result.success

    served = serialize_value(RepositorySnap.from_def(defs.get_repository_def()))
    assert "LAKE_SECRET" in served  # the UI shows which variable, not its value
    runs = [serialize_value(run) for run in instance.get_runs()]
    events = [serialize_value(entry) for run in instance.get_runs() for entry in instance.all_logs(run.run_id)]
    lake = s3fs.S3FileSystem(key=KEY, secret=SECRET, **options)
    stored = [lake.cat_file(path) for path in lake.find("lake/c2c") if path.endswith(".json")]
    assert any(b"raw_documents" in body for body in stored)
    catalog = Path(settings.catalog.path).read_bytes()
    logs = capfd.readouterr()
    for where, text in [
        ("the repository snapshot the UI serves", served),
        ("run records", "".join(runs)),
        ("event logs", "".join(events)),
        ("manifests and batch specs", b"".join(stored).decode()),
        ("the catalog", catalog.decode("latin-1")),
        ("the logs", logs.out + logs.err),
    ]:
        assert SECRET not in text, where
        assert KEY not in text, where
