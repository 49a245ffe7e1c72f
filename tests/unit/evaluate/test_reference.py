"""The reference row without Dagster: a fixed model scored by the bits-per-byte engine once per
(model, settings, eval-set text) and reused after, byte for byte; a set whose text changed is the
only one scored again; the row joins the comparison table; bad separators are clear errors. The
tiny random model stands in for SmolLM2 (the engine is the same)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from resources.common.storage import ShardStore
from resources.common.versioning import OutputVersion
from resources.evaluate.errors import EvaluationError
from resources.evaluate.history import comparison_table
from resources.evaluate.reference import REFERENCE, REFERENCE_EVALUATION, evaluate_reference, read_reference
from resources.evaluate.settings import EvaluationSettings, ReferenceSettings
from resources.settings import PROJECT_ROOT
from tests.unit.evaluate.test_history import commit, evaluation

PARAGRAPHS = [
    line.strip()
    for line in (PROJECT_ROOT / "data/reference/wikitext2_reference.txt").read_text().splitlines()
    if len(line.split()) > 40
]


def run(store: ShardStore, settings: EvaluationSettings, model: Path, version: str = "model-v1", run_id: str = "r1"):
    result = evaluate_reference(
        store,
        settings,
        model,
        version,
        code_version="1-abc",
        run_id=run_id,
        documents_asset="deduplicated_documents",
        tokens_asset="token_shards",
        validation_fraction=0.1,
    )
    store.commit(OutputVersion("1").manifest(REFERENCE_EVALUATION, None, run_id, result.files))
    return result


@pytest.fixture
def eval_sets(tmp_path: Path) -> dict[str, Path]:
    paths = {"wiki": tmp_path / "wiki.txt", "facts": tmp_path / "facts.txt"}
    paths["wiki"].write_text("\n\n".join(PARAGRAPHS[:3]))
    paths["facts"].write_text("\n\n".join(PARAGRAPHS[3:5]))
    return paths


def settings_for(eval_sets: dict[str, Path], **reference: object) -> EvaluationSettings:
    return EvaluationSettings(
        eval_sets={name: str(path) for name, path in eval_sets.items()},
        held_out=False,
        device="cpu",
        reference=ReferenceSettings(name="tiny-reference", **reference),
    )


def test_reference_is_scored_once_and_reused_until_its_text_or_model_changes(
    tiny_model: Path, eval_sets: dict[str, Path], tmp_path: Path
) -> None:
    store = ShardStore(str(tmp_path / "store"))
    settings = settings_for(eval_sets)
    first = run(store, settings, tiny_model)
    assert first.scored == ["wiki", "facts"] and first.reused == []
    rows = first.rows
    assert rows.get_column("kind").to_list() == [REFERENCE, REFERENCE]
    assert rows.get_column("model").to_list() == ["tiny-reference"] * 2
    assert all(math.isfinite(v) and v > 0 for v in rows.get_column("bits_per_byte"))
    assert rows.get_column("unigram_bits_per_byte").null_count() == 2  # another tokenizer: no baseline

    again = run(store, settings, tiny_model, run_id="r2")
    assert again.scored == [] and again.reused == ["wiki", "facts"]
    assert again.files[0].sha256 == first.files[0].sha256  # same bytes: the data version holds

    eval_sets["facts"].write_text("\n\n".join(PARAGRAPHS[5:7]))
    edited = run(store, settings, tiny_model, run_id="r3")
    assert edited.scored == ["facts"] and edited.reused == ["wiki"]
    assert edited.rows.row(0, named=True) == first.rows.row(0, named=True)

    other_model = run(store, settings, tiny_model, version="model-v2", run_id="r4")
    assert other_model.scored == ["wiki", "facts"]
    assert read_reference(store).get_column("model_version").unique().to_list() == ["model-v2"]


def test_document_separator_scores_other_boundaries_and_must_exist(
    tiny_model: Path, eval_sets: dict[str, Path], tmp_path: Path
) -> None:
    eos = run(ShardStore(str(tmp_path / "a")), settings_for(eval_sets), tiny_model).rows
    pad = run(ShardStore(str(tmp_path / "b")), settings_for(eval_sets, document_separator="<|pad|>"), tiny_model).rows
    assert eos.get_column("bytes").to_list() == pad.get_column("bytes").to_list()
    assert eos.get_column("bits_per_byte").to_list() != pad.get_column("bits_per_byte").to_list()
    with pytest.raises(EvaluationError, match=r"document_separator '<\|nope\|>' is not in its vocabulary"):
        run(ShardStore(str(tmp_path / "c")), settings_for(eval_sets, document_separator="<|nope|>"), tiny_model)


def test_reference_row_closes_the_comparison_table(
    tiny_model: Path, eval_sets: dict[str, Path], tmp_path: Path
) -> None:
    store = ShardStore(str(tmp_path / "store"))
    commit(store, evaluation("e1", "g1/step-6", 1.0, 0.5), "run-1")
    reference = run(store, settings_for({"wiki": eval_sets["wiki"]}), tiny_model).rows

    table = comparison_table(store, read_reference(store))
    assert table.get_column("kind").to_list() == ["checkpoint", REFERENCE]
    last = table.row(-1, named=True)
    assert last["checkpoint"] == last["generation"] == "tiny-reference"
    assert last["checkpoint_data_version"] == "model-v1" and last["step"] is None
    assert last["bpb_wiki"] == pytest.approx(reference.get_column("bits_per_byte")[0])
    assert last["bpb_held_out"] is None  # the checkpoint's set the reference was not scored on
    assert comparison_table(store, pl.DataFrame()).get_column("kind").to_list() == ["checkpoint"]
