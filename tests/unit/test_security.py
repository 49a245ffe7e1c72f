"""Security rules, one test each: nothing unpickled from storage or input, no model code run, YAML
read safely, no shell, partition keys, URLs and file names kept out of paths and SQL, the UI on
loopback, credentials only from the environment. The source scans read every Python file of the
project, so a rule broken anywhere later fails here."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from resources.common.catalog import LineageCatalog
from resources.common.storage import Manifest, ShardInfo, StorageSettings
from resources.evaluate.lm_eval_tasks import LmEvalSettings
from resources.ingest.sources import SourceSettings
from resources.settings import PROJECT_ROOT, SettingsError, _SettingsLoader, parse_settings
from resources.train.checkpoints import STATE_FILE, load_trainer_state

SOURCE_DIRS = ("assets", "resources", "jobs", "scripts", "bench", "tests")


def project_files() -> list[Path]:
    files = [PROJECT_ROOT / "definitions.py"]
    for folder in SOURCE_DIRS:
        files += sorted((PROJECT_ROOT / folder).rglob("*.py"))
    return files


def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call with its dotted name (`torch.load`, `subprocess.run`, `eval`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def violations(rule) -> list[str]:
    found = []
    for path in project_files():
        if path.name == Path(__file__).name:
            continue
        for message in rule(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(PROJECT_ROOT)}: {message}")
    return found


def test_nothing_imports_a_pickle_module() -> None:
    def rule(tree: ast.AST):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            yield from (f"imports {n}" for n in names if n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib"})

    assert violations(rule) == []


def test_every_torch_load_is_weights_only() -> None:
    def rule(tree: ast.AST):
        for name, call in calls(tree):
            if name.endswith("torch.load"):
                value = keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    yield f"line {call.lineno}: torch.load without weights_only=True"

    assert violations(rule) == []


def test_trainer_state_with_code_in_it_is_refused(tmp_path: Path) -> None:
    """A trainer state (from storage, maybe written by someone else) that would run code when
    unpickled is refused by `weights_only`, and the code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"step": 1, "payload": Payload()}, tmp_path / STATE_FILE)
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl"):
        load_trainer_state(tmp_path)
    assert not marker.exists()


def test_no_trust_remote_code_in_the_code() -> None:
    def rule(tree: ast.AST):
        for _, call in calls(tree):
            value = keyword(call, "trust_remote_code")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                yield f"line {call.lineno}: trust_remote_code={ast.unparse(value)}"

    assert violations(rule) == []


@pytest.mark.parametrize("value", [True, "true", 1])
def test_trust_remote_code_is_refused_in_settings(value: object) -> None:
    with pytest.raises(ValueError, match="trust_remote_code is refused"):
        LmEvalSettings(model_args={"trust_remote_code": value})
    with pytest.raises(SettingsError, match=r"evaluation.lm_eval.model_args: Value error, trust_remote_code"):
        parse_settings(f"evaluation: {{lm_eval: {{model_args: {{trust_remote_code: {value!r}}}}}}}")


def test_yaml_is_only_read_safely() -> None:
    assert issubclass(_SettingsLoader, yaml.SafeLoader)

    def rule(tree: ast.AST):
        for name, call in calls(tree):
            if name in {"yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"}:
                yield f"line {call.lineno}: {name}"
            if name == "yaml.load" and ast.unparse(keyword(call, "Loader") or ast.Constant(None)) != "_SettingsLoader":
                yield f"line {call.lineno}: yaml.load without a SafeLoader"

    assert violations(rule) == []


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"storage: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(SettingsError, match="not valid YAML"):
        parse_settings(text)
    assert not marker.exists()


def test_no_shell() -> None:
    def rule(tree: ast.AST):
        for name, call in calls(tree):
            shell = keyword(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                yield f"line {call.lineno}: {name}(shell=...)"
            if name in {"os.system", "os.popen", "eval", "exec", "subprocess.getoutput", "subprocess.getstatusoutput"}:
                yield f"line {call.lineno}: {name}"

    assert violations(rule) == []


def test_catalog_values_are_parameters_never_sql(tmp_path: Path) -> None:
    """A URL and a partition key written to break out of a quoted string stay data."""
    catalog = LineageCatalog(str(tmp_path / "catalog.duckdb"))
    key = "b1'); DROP TABLE shards; --"
    url = "http://x.example/'; DROP TABLE documents; --"
    documents = pl.DataFrame(
        {
            "doc_id": ["d1"],
            "url": [url],
            "domain": ["x.example"],
            "crawl": ["CC"],
            "crawl_batch": [key],
            "warc_path": ["f'1.warc.gz"],
            "warc_record_id": ["<urn:uuid:1>"],
            "fetch_time": [None],
        },
        schema_overrides={"fetch_time": pl.Datetime("us", "UTC")},
    )
    catalog.record_batch(key, "CC", ["f'1.warc.gz"])
    files = [ShardInfo("part-0.parquet", 1, 10, "abc")]
    catalog.record_materialization(Manifest("raw_documents", key, files, run_id="r'1"), documents)
    hits = catalog.find_url(url)
    assert hits.get_column("crawl_batch").to_list() == [key]
    assert catalog.find_url("' OR '1'='1").height == 0
    tables = set(catalog.query("SELECT table_name FROM information_schema.tables").get_column("table_name"))
    assert {"shards", "documents", "crawl_batches", "materializations"} <= tables


def test_ui_listens_on_loopback_unless_told_otherwise() -> None:
    def dry_run(*assignments: str) -> str:
        done = subprocess.run(
            ["make", "-n", "ui", *assignments], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        )
        return next(line for line in done.stdout.splitlines() if "dagster dev" in line)

    assert " -h 127.0.0.1 " in dry_run()
    assert " -h 0.0.0.0 " in dry_run("UI_HOST=0.0.0.0")

    def rule(tree: ast.AST):
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in {"0.0.0.0", "::"}:
                yield f"line {node.lineno}: binds every interface"

    assert violations(rule) == []


@pytest.mark.parametrize(
    ("section", "options"),
    [
        ("storage", {"key": "AKIA...", "secret": "s3cr3t"}),
        ("storage", {"client_kwargs": {"aws_secret_access_key": "s3cr3t"}}),
        ("source", {"token": "t0k3n"}),
        ("source", {"password": "pw"}),
    ],
)
def test_credentials_in_settings_are_refused(section: str, options: dict) -> None:
    model = StorageSettings if section == "storage" else SourceSettings
    with pytest.raises(ValueError, match=rf"{section}.storage_options\.\S+: credentials are not accepted"):
        model(storage_options=options)


def test_passwords_in_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="a password in the URL is not accepted"):
        StorageSettings(root="s3://AKIA:s3cr3t@bucket/prefix")
    with pytest.raises(ValueError, match="a password in the URL is not accepted"):
        SourceSettings(listing="https://user:pw@example.org/warc.paths.gz")


def test_credentials_come_from_named_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = StorageSettings(root="memory://bucket", credentials_env={"key": "MY_KEY", "secret": "MY_SECRET"})
    assert "s3cr3t" not in settings.model_dump_json()
    with pytest.raises(KeyError, match="MY_KEY"):
        settings.credentials_env.resolve()
    monkeypatch.setenv("MY_KEY", "AKIA")
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    assert settings.credentials_env.resolve() == {"key": "AKIA", "secret": "s3cr3t"}
