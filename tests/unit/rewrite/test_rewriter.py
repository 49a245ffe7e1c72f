"""Synthetic rewriting: recipes and selection, prompt fitting, the post-filter, both backends with
a real vLLM (one in-process engine and one OpenAI-compatible server per session, on the tiny
locally built model), resume after an interrupted run, and bad inputs (missing model, endpoint
down or failing, documents longer than the context, nothing selected)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from resources.common.schemas import (
    DOCUMENTS,
    REMOVED,
    REMOVED_COLUMNS,
    SYNTHETIC_REMOVED_SCHEMA,
    SYNTHETIC_SCHEMA,
    doc_id_of,
)
from resources.common.storage import Manifest, ShardStore
from resources.common.versioning import OutputVersion
from resources.llm.backend import Backend, Generation, GenerationRequest
from resources.llm.endpoint import EndpointError
from resources.llm.model import ModelPathError, inspect_model, load_tokenizer
from resources.llm.tiny_model import build_tiny_model
from resources.llm.vllm_server import free_port
from resources.rewrite.metrics import RewriteMetrics, length_ratio, ngram_overlap
from resources.rewrite.post_filter import PostFilter, PostFilterSettings
from resources.rewrite.prompts import ChatTemplateMissing, PromptBuilder
from resources.rewrite.recipes import LIBRARY, Recipe, recipe_fingerprint, resolve_recipes, sample_point
from resources.rewrite.resume import RewriteOutput, rewrite_partition
from resources.rewrite.rewriter import Rewriter, RewriteSettings
from resources.settings import PROJECT_ROOT
from tests.vllm_fixtures import SMOLLM2_MAX_MODEL_LEN, TINY_MAX_MODEL_LEN

PARAGRAPHS = [
    line.strip()
    for line in (PROJECT_ROOT / "data/reference/wikitext2_reference.txt").read_text().splitlines()
    if len(line.split()) > 40
]
PROVENANCE = ("url", "domain", "crawl", "crawl_batch", "warc_path", "warc_record_id", "fetch_time", "language")
UPSTREAM, ASSET, PARTITION = "deduplicated_documents", "rewritten_documents", "CC-TEST-2024-01.batch-0"


def source_frame(rows: int, start: int = 0, *, long_text_at: int | None = None) -> pl.DataFrame:
    """Documents as the dedup stage writes them: text, provenance, language, quality_score."""
    texts = [PARAGRAPHS[(start + i) % len(PARAGRAPHS)] for i in range(rows)]
    if long_text_at is not None:
        texts[long_text_at] = " ".join(PARAGRAPHS[:40])  # thousands of tokens: far beyond the context
    indexes = range(start, start + rows)
    return pl.DataFrame(
        {
            "doc_id": [doc_id_of(f"{i} {t}") for i, t in zip(indexes, texts, strict=True)],
            "text": texts,
            "url": [f"https://site{i % 3}.example.org/page/{i}" for i in indexes],
            "domain": [f"site{i % 3}.example.org" for i in indexes],
            "crawl": ["CC-TEST-2024-01"] * rows,
            "crawl_batch": [PARTITION] * rows,
            "warc_path": [f"crawl/CC-TEST-2024-01-{i // 10:05d}.warc.gz" for i in indexes],
            "warc_record_id": [f"<urn:uuid:{hashlib.md5(str(i).encode()).hexdigest()}>" for i in indexes],
            "fetch_time": [datetime(2024, 1, 1, 12, i % 60, tzinfo=UTC) for i in indexes],
            "language": ["en" if i % 4 else "de" for i in indexes],
            "quality_score": [((i * 37) % 100) / 100 for i in indexes],
        },
        schema_overrides={"fetch_time": pl.Datetime("us", "UTC"), "quality_score": pl.Float32},
    )


def settings_for(**overrides: object) -> RewriteSettings:
    """Short generations (the tiny model's text is noise anyway) and a small context, so that
    the long test document must be cut."""
    body: dict[str, object] = {
        "max_model_len": TINY_MAX_MODEL_LEN,
        "recipes": {
            "encyclopedic": {"sampling": {"max_tokens": 24}},
            "qa_pairs": {"sampling": {"max_tokens": 16}, "selection": {"languages": ["en"]}},
        },
        "post_filter": {"drop_truncated": False},
        "endpoint": {"retries": 2, "backoff_s": 0.05, "timeout_s": 60},
    }
    return RewriteSettings.model_validate({**body, **overrides})


class Counting:
    """Wraps a backend: counts the prompts it is asked for, and can fail after some calls
    (a run killed mid-partition)."""

    def __init__(self, inner: Backend, fail_after_calls: int | None = None) -> None:
        self.inner, self.fail_after_calls = inner, fail_after_calls
        self.calls: list[int] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("killed")
        self.calls.append(len(requests))
        return self.inner.generate(requests)

    def close(self) -> None:
        """Borrowed: the session fixture closes the engine."""


def upstream_store(tmp_path: Path, frames: list[pl.DataFrame]) -> ShardStore:
    store = ShardStore(str(tmp_path / "store"))
    files = [store.write_parquet_shard(UPSTREAM, PARTITION, i, frame) for i, frame in enumerate(frames)]
    store.commit(Manifest(asset=UPSTREAM, partition=PARTITION, files=files))
    return store


def run_partition(store: ShardStore, rewriter: Rewriter) -> RewriteOutput:
    return rewrite_partition(
        store,
        rewriter,
        OutputVersion("t"),
        asset=ASSET,
        upstream=UPSTREAM,
        partition=PARTITION,
        run_id="r",
    )


def staged_notes(store: ShardStore) -> list[str]:
    return sorted(p.rsplit("/", 1)[1] for p in store.fs.glob(store.path(ASSET, PARTITION, "_staged-*")))


# --------------------------------------------------------------------------- the tiny model


def test_tiny_model_is_small_deterministic_and_vllm_shaped(tiny_model: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again")
    for file in sorted(tiny_model.iterdir()):  # the marker too: it names the text by content, not path
        assert file.read_bytes() == (again / file.name).read_bytes(), file.name
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] >= 64
    assert sum(p.stat().st_size for p in tiny_model.iterdir()) < 4 << 20


# --------------------------------------------------------------------------- recipes and selection


def test_recipes_resolve_overrides_and_fingerprint_every_output_shaping_field() -> None:
    (qa,) = resolve_recipes({"qa_pairs": {"sampling": {"temperature": 0.1}, "selection": {"languages": ["en"]}}})
    assert qa.sampling.temperature == 0.1 and qa.sampling.max_tokens == LIBRARY["qa_pairs"].sampling.max_tokens
    assert qa.template == LIBRARY["qa_pairs"].template and qa.selection.languages == ["en"]
    base = recipe_fingerprint([LIBRARY["qa_pairs"]])
    assert recipe_fingerprint([qa]) != base
    for change in ({"version": "next"}, {"cue": "Pairs:"}, {"chat_template": "never"}, {"system": "Be brief."}):
        assert recipe_fingerprint(resolve_recipes({"qa_pairs": change})) != base, change
    assert recipe_fingerprint(resolve_recipes({"qa_pairs": {}})) == base
    custom = {"mine": {"version": "1", "template": "Summarize {text} in {{braces}}:\n"}}
    assert resolve_recipes(custom)[0].render("X") == "Summarize X in {{braces}}:\n"
    with pytest.raises(ValueError, match="exactly once"):
        resolve_recipes({"mine": {"version": "1", "template": "no slot"}})
    with pytest.raises(ValueError, match="library recipes: encyclopedic"):
        resolve_recipes({"unknown": {}})


def test_selection_by_quality_language_domain_crawl_sample_fraction_and_cap() -> None:
    frame = source_frame(400)

    def select(**selection: object) -> pl.DataFrame:
        recipe = Recipe(name="r", version="1", template="{text}", selection=selection)
        return frame.filter(recipe.select(frame))

    assert select().height == 400
    middle = select(quality_range=(0.3, 0.6))["quality_score"]
    assert middle.len() > 0 and middle.min() >= 0.3 and middle.max() < 0.6
    assert select(quality_range=(0.99, 1.0))["quality_score"].min() >= 0.99
    assert set(select(languages=["de"])["language"]) == {"de"}
    assert set(select(domains=["site1.example.org"])["domain"]) == {"site1.example.org"}
    assert select(domains=["example.org"]).height == 400  # subdomains match
    assert select(crawls=["CC-OTHER"]).height == 0
    sampled = select(sample_fraction=0.25)
    assert 60 < sampled.height < 140
    assert sampled.equals(select(sample_fraction=0.25))  # deterministic
    assert all(sample_point("r", d) < 0.25 for d in sampled["doc_id"])
    capped = select(sample_fraction=0.25, languages=["en"], max_documents=5)
    assert capped.height == 5 and set(capped["doc_id"]) <= set(sampled["doc_id"]) and set(capped["language"]) == {"en"}
    points = sorted(sample_point("r", d) for d in select(sample_fraction=0.25, languages=["en"])["doc_id"])
    assert sorted(sample_point("r", d) for d in capped["doc_id"]) == points[:5]  # the smallest sample points
    assert select(max_documents=1000).height == 400
    with pytest.raises(ValueError, match="quality_score"):
        Recipe(name="r", version="1", template="{text}", selection={"quality_range": (0, 0.5)}).select(
            frame.drop("quality_score")
        )


# --------------------------------------------------------------------------- prompts and post-filter


def test_recipes_use_the_chat_template_or_a_plain_prompt_as_they_say(tiny_model: Path, tmp_path: Path) -> None:
    """A model without a chat template is refused by a recipe that needs one, naming what is
    missing; `if_present` falls back to the plain prompt and its cue, `never` always uses it."""
    base = tmp_path / "base-model"
    shutil.copytree(tiny_model, base)
    (base / "chat_template.jinja").unlink()
    recipe = LIBRARY["qa_pairs"]
    chat = PromptBuilder(load_tokenizer(inspect_model(tiny_model)), 1024)
    plain = PromptBuilder(load_tokenizer(inspect_model(base)), 1024, f"model {base}")
    assert chat.render(recipe, "X") == f"<|begin|>user\n{recipe.render('X')}<|end|>\n<|begin|>assistant\n"
    assert chat.render(recipe.model_copy(update={"chat_template": "never"}), "X") == recipe.render("X") + recipe.cue
    with pytest.raises(ChatTemplateMissing, match=rf"recipe 'qa_pairs' needs a chat template and model {base}"):
        plain.check(recipe)
    with pytest.raises(ChatTemplateMissing, match="chat template"):
        Rewriter(settings_for(), base, backend=Scripted())
    fallback = recipe.model_copy(update={"chat_template": "if_present"})
    plain.check(fallback)
    (prompt,) = plain.build(fallback, ["The lobster is blue."])
    decoded = plain.tokenizer.decode(prompt.token_ids, skip_special_tokens=True)
    assert decoded.startswith("Text:\nThe lobster is blue.\n\n") and decoded.endswith("Answer: ...\n\nQuestion:")


def test_prompts_longer_than_the_context_are_cut_by_tokens(tiny_model: Path) -> None:
    tokenizer = load_tokenizer(inspect_model(tiny_model))
    builder = PromptBuilder(tokenizer, max_model_len=256)
    recipe = LIBRARY["encyclopedic"].model_copy(update={"sampling": LIBRARY["encyclopedic"].sampling.model_copy(
        update={"max_tokens": 64})})  # fmt: skip
    short, long = builder.build(recipe, [PARAGRAPHS[0][:200], " ".join(PARAGRAPHS[:20])])
    assert short.source_tokens_cut == 0 and len(short.token_ids) <= 192
    assert long.source_tokens_cut > 1000 and len(long.token_ids) <= 192
    prompt = tokenizer.decode(long.token_ids)
    assert prompt.endswith("<|begin|>assistant\n") and PARAGRAPHS[0][:100] in prompt  # the tiny chat template
    assert long.source in prompt and len(long.source) < len(" ".join(PARAGRAPHS[:20]))
    capped = recipe.model_copy(update={"max_prompt_tokens": 100})
    assert len(builder.build(capped, [" ".join(PARAGRAPHS[:5])])[0].token_ids) <= 100
    with pytest.raises(ValueError, match=r"leaves .* tokens for the document"):
        PromptBuilder(tokenizer, max_model_len=80).check(recipe)


def test_post_filter_rules() -> None:
    check = PostFilter(PostFilterSettings(min_chars=5))
    fine = "The European lobster lives in the eastern Atlantic Ocean and in the Mediterranean Sea."
    assert check(fine, "stop") is None
    assert check("", "stop") == ("rewrite_too_short", "chars=0<5")
    assert check(fine, "length") == ("rewrite_truncated", "finish_reason=length")
    assert check("As an AI language model, I cannot rewrite this.", "stop")[0] == "rewrite_refusal"
    assert check("I cannot stress enough how big it is. " + fine, "stop")[0] == "rewrite_refusal"
    rule, detail = check("the lobster is " * 40, "stop")
    assert rule == "rewrite_gopher_repetition" and ">" in detail
    assert PostFilter(PostFilterSettings(drop_truncated=False))(fine, "length") is None


class Scripted:
    """A backend without a model: a distinct text per prompt, except that every qa_pairs prompt
    (max_tokens 16 in `settings_for`) gets the same answer, so all but the first are duplicates."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        def text(r: GenerationRequest) -> str:
            return "Question: same? Answer: yes." if r.sampling.max_tokens == 16 else f"Rewrite {sum(r.token_ids)}."

        return [Generation(text(r), "stop", len(r.token_ids), 4) for r in requests]

    def close(self) -> None:
        """Nothing to release."""


def test_duplicate_outputs_are_removed_and_catalog_rows_cover_reused_shards(tiny_model: Path, tmp_path: Path) -> None:
    frames = [source_frame(5, start=5 * i) for i in range(3)]
    store = upstream_store(tmp_path, frames)
    with pytest.raises(KeyboardInterrupt):
        run_partition(store, Rewriter(settings_for(), tiny_model, backend=Counting(Scripted(), fail_after_calls=1)))
    output = run_partition(store, Rewriter(settings_for(), tiny_model, backend=Scripted()))
    assert output.stats.shards_reused == 1 and output.stats.shards_generated == 2
    removed = pl.concat(store.iter_frames(output.manifest, table=REMOVED))
    assert set(removed["rule"]) == {"rewrite_duplicate_output"} and removed["duplicate_of"].equals(removed["doc_id"])
    assert output.removed_by_rule == {"rewrite_duplicate_output": removed.height} and removed.height > 0
    # the catalog's rows, reused shard included, are what the committed shards hold
    assert output.documents.equals(pl.concat(store.iter_frames(output.manifest, output.documents.columns)))
    assert output.removed.equals(pl.concat(store.iter_frames(output.manifest, REMOVED_COLUMNS, REMOVED)))


class Echo:
    """A backend that answers each prompt with the head of its source text (a verbatim copy) or, for
    qa_pairs, with a question in other words; records nothing else."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.token_ids, skip_special_tokens=True)
            source = prompt.split("Text:\n", 1)[1].split("<|end|>")[0]
            head = source[:200].rsplit(" ", 1)[0]  # whole words
            text = "Question: which lobster is blue? Answer: that one." if r.sampling.max_tokens == 16 else head
            out.append(Generation(text, "stop", len(r.token_ids), 8))
        return out

    def close(self) -> None:
        """Nothing to release."""


class LengthScorer:
    """A stand-in quality classifier: longer texts score higher (deterministic, in [0, 1])."""

    model_version = "length-1"

    def score(self, texts: list[str]) -> np.ndarray:
        return np.array([min(len(t) / 1000, 1.0) for t in texts], dtype=np.float32)


def test_each_output_is_measured_against_its_source_and_summed_per_recipe(tiny_model: Path, tmp_path: Path) -> None:
    frame = source_frame(8)
    tokenizer = load_tokenizer(inspect_model(tiny_model))
    rewriter = Rewriter(settings_for(), tiny_model, backend=Echo(tokenizer), quality=LengthScorer())
    result = rewriter.rewrite(frame)
    kept = result.kept.join(frame.select("doc_id", "text"), left_on="source_doc_id", right_on="doc_id", suffix="_src")
    copies = kept.filter(pl.col("recipe") == "encyclopedic")
    assert (copies["source_overlap"] == 1.0).all()  # the head of the source, word for word
    ratios = [len(out) / len(src) for out, src in zip(copies["text"], copies["text_src"], strict=True)]
    assert copies["length_ratio"].to_list() == pytest.approx(ratios, rel=1e-6)
    questions = kept.filter(pl.col("recipe") == "qa_pairs")
    assert (questions["source_overlap"] == 0.0).all() and questions.height == 1  # the others are duplicates
    assert kept["quality_score"].to_list() == pytest.approx([len(t) / 1000 for t in kept["text"]])
    assert kept["source_quality_score"].to_list() == pytest.approx([min(len(t) / 1000, 1) for t in kept["text_src"]])
    assert rewriter.fingerprint != Rewriter(settings_for(), tiny_model, backend=Echo(tokenizer)).fingerprint

    metrics = result.metrics
    encyclopedic, qa = metrics.recipes["encyclopedic"], metrics.recipes["qa_pairs"]
    assert (encyclopedic.generated, encyclopedic.kept, encyclopedic.copies) == (8, 8, 8)
    english = frame.filter(pl.col("language") == "en").height
    assert (qa.generated, qa.kept, dict(qa.removed)) == (english, 1, {"rewrite_duplicate_output": english - 1})
    summary = {row[0]: row for row in metrics.summary_rows()}
    assert summary["qa_pairs"][3] == f"{1 / english:.2f}" and summary["encyclopedic"][8] == "1.000"
    assert summary["qa_pairs"][4] == f"rewrite_duplicate_output {english - 1}"
    examples = metrics.example_rows()
    assert [row[0] for row in examples] == ["encyclopedic"] * 3 + ["qa_pairs"]
    assert examples[0][2] in examples[0][1]  # rewrite excerpt is the source's head
    # Shards add up: counts and sums per recipe, examples still the smallest source ids.
    twice = metrics + RewriteMetrics.from_dict(metrics.to_dict())
    assert twice.recipes["encyclopedic"].generated == 16 and len(twice.examples["encyclopedic"]) == 3
    assert twice.recipes["qa_pairs"].overlap_sum == 0 and twice.recipes["encyclopedic"].overlap_sum == 16


def test_ngram_overlap_and_length_ratio() -> None:
    source = "The European lobster is blue in life and red when cooked, like most lobsters."
    assert ngram_overlap(source, source) == 1.0
    assert ngram_overlap("The European lobster is blue in life.", source) == 1.0  # a part, copied
    assert ngram_overlap("Lobsters of Europe look blue while alive but turn red once cooked.", source) == 0.0
    assert 0 < ngram_overlap("The European lobster is blue. Cooked, it turns red.", source) < 1
    assert ngram_overlap("", source) == 0.0 and ngram_overlap("Blue lobster", source) == 0.0
    assert length_ratio("abc", "abcdef") == 0.5 and length_ratio("abc", "") == 3.0


# --------------------------------------------------------------------------- bad inputs before any work


def test_missing_or_broken_model_path_fails_before_an_engine_starts(tiny_model: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelPathError, match="does not exist"):
        Rewriter(settings_for(), tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelPathError, match="not a directory"):
        Rewriter(settings_for(), tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelPathError, match=r"no config\.json"):
        Rewriter(settings_for(), empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelPathError, match=r"cannot read .*config\.json"):
        Rewriter(settings_for(), broken)
    (broken / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelPathError, match="no tokenizer"):
        Rewriter(settings_for(), broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelPathError, match="cannot load the tokenizer"):
        Rewriter(settings_for(), broken)
    with pytest.raises(ValueError, match="exceeds the model's 1024 positions"):
        Rewriter(settings_for(max_model_len=4096), tiny_model)
    assert time.monotonic() - started < 30  # no engine was started


def test_endpoint_down_fails_after_bounded_retries(tiny_model: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
    started = time.monotonic()
    with pytest.raises(EndpointError, match=r"no usable answer after 3 attempts; last error: .*refused"):
        Rewriter(settings_for(backend="endpoint", endpoint={"url": url, "retries": 2, "backoff_s": 0.05}), tiny_model)
    assert time.monotonic() - started < 10


@pytest.fixture
def failing_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering 500 to everything; yields its URL and the paths it was asked for."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            hits.append(self.path)
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b'{"error": "boom"}')

        do_GET = do_POST = _fail

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", hits
    server.shutdown()


def test_endpoint_http_500_fails_after_bounded_retries(tiny_model: Path, failing_server) -> None:
    url, hits = failing_server
    with pytest.raises(EndpointError, match=r"after 3 attempts; last error: HTTP 500: .*boom"):
        Rewriter(settings_for(backend="endpoint", endpoint={"url": url, "retries": 2, "backoff_s": 0.05}), tiny_model)
    assert hits == ["/v1/models"] * 3


# --------------------------------------------------------------------------- real generation (vLLM)


@pytest.mark.vllm
def test_vllm_rewrites_with_complete_provenance(tiny_model: Path, vllm_backend) -> None:
    frame = source_frame(12, long_text_at=3)
    rewriter = Rewriter(settings_for(), tiny_model, backend=vllm_backend)
    result = rewriter.rewrite(frame)
    kept, removed, stats = result.kept, result.removed, result.stats
    english = frame.filter(pl.col("language") == "en").height
    assert stats.selected == {"encyclopedic": 12, "qa_pairs": english}
    assert stats.prompts == 12 + english == kept.height + removed.height
    assert stats.prompts_cut == 1 + (frame["language"][3] == "en") and stats.source_tokens_cut > 1000
    assert dict(kept.schema) == SYNTHETIC_SCHEMA and dict(removed.schema) == SYNTHETIC_REMOVED_SCHEMA
    assert kept["doc_id"].to_list() == [doc_id_of(t) for t in kept["text"]]
    assert kept["doc_id"].is_unique().all() and (kept["text"].str.len_chars() > 0).all()
    assert set(kept["finish_reason"]) <= {"stop", "length"}
    assert (kept["prompt_tokens"] <= TINY_MAX_MODEL_LEN - 16).all() and (kept["output_tokens"] <= 24).all()
    assert set(kept.filter(pl.col("source_tokens_cut") > 0)["source_doc_id"]) <= {frame["doc_id"][3]}
    # provenance: every column equal to the source document's
    joined = kept.join(frame, left_on="source_doc_id", right_on="doc_id", suffix="_source")
    assert joined.height == kept.height
    for column in PROVENANCE:
        assert joined[column].equals(joined[f"{column}_source"]), column
        assert joined[column].null_count() == 0, column
    row = kept.filter(pl.col("recipe") == "qa_pairs").row(0, named=True)
    assert row["recipe_version"] == "2" and row["model"] == f"tiny-llama-{rewriter.model_info.fingerprint[:8]}"
    assert json.loads(row["sampling"]) == {
        "frequency_penalty": 0.5,
        "max_tokens": 16,
        "seed": 0,
        "stop": [],
        "temperature": 0.3,
        "top_p": 0.9,
    }
    assert kept["quality_score"].null_count() == kept.height  # no classifier given
    assert (kept["length_ratio"] > 0).all() and kept["source_overlap"].is_between(0, 1).all()
    assert result.metrics.recipes["encyclopedic"].generated == 12
    # seeded per row: the same shard gives the same text
    assert Rewriter(settings_for(), tiny_model, backend=vllm_backend).rewrite(frame).kept.equals(kept)


@pytest.mark.vllm
def test_vllm_post_filter_reasons_and_empty_selection(tiny_model: Path, vllm_backend) -> None:
    frame = source_frame(6)
    strict = settings_for(post_filter={"drop_truncated": True})
    result = Rewriter(strict, tiny_model, backend=vllm_backend).rewrite(frame)
    truncated = result.removed.filter(pl.col("rule") == "rewrite_truncated")
    assert truncated.height == result.stats.finish_reasons["length"] > 0  # random weights rarely stop
    assert truncated["stage"].unique().to_list() == ["rewrite"]
    assert set(truncated["source_doc_id"]) <= set(frame["doc_id"]) and truncated["url"].null_count() == 0

    nothing = settings_for(
        recipes={"encyclopedic": {"sampling": {"max_tokens": 8}, "selection": {"crawls": ["CC-NONE"]}}}
    )
    empty = Rewriter(nothing, tiny_model, backend=vllm_backend).rewrite(frame)
    assert empty.kept.height == 0 and empty.removed.height == 0 and dict(empty.kept.schema) == SYNTHETIC_SCHEMA
    assert empty.stats.documents == 6 and empty.stats.selected == {"encyclopedic": 0} and empty.stats.prompts == 0


@pytest.mark.vllm
def test_partition_resumes_after_an_interrupted_run(tiny_model: Path, vllm_backend, tmp_path: Path) -> None:
    frames = [source_frame(5, start=5 * i) for i in range(3)]
    reference = run_partition(
        upstream_store(tmp_path / "ref", frames), Rewriter(settings_for(), tiny_model, vllm_backend)
    )

    store = upstream_store(tmp_path / "run", frames)
    killed = Counting(vllm_backend, fail_after_calls=1)
    with pytest.raises(KeyboardInterrupt):
        run_partition(store, Rewriter(settings_for(), tiny_model, backend=killed))
    assert store.read_manifest(ASSET, PARTITION) is None  # nothing published
    assert [n.split("-")[1] for n in staged_notes(store)] == ["00000"]

    resumed = Counting(vllm_backend)
    output = run_partition(store, Rewriter(settings_for(), tiny_model, backend=resumed))
    assert len(resumed.calls) == 2  # shards 1 and 2 only
    assert output.stats.shards_reused == 1 and output.stats.shards_generated == 2
    assert output.manifest.data_version == reference.manifest.data_version  # same bytes as an uninterrupted run
    assert output.stats.prompts == reference.stats.prompts and output.rows_in == 15
    assert staged_notes(store) == []  # the commit collected the notes

    changed = Counting(vllm_backend)
    settings = settings_for(recipes={"encyclopedic": {"version": "2", "sampling": {"max_tokens": 8}}})
    run_partition(store, Rewriter(settings, tiny_model, backend=changed))
    assert len(changed.calls) == 3  # another recipe version: nothing reused


# --------------------------------------------------------------------------- real generation (vLLM server)


@pytest.mark.vllm
def test_endpoint_backend_against_a_vllm_server(tiny_model: Path, vllm_server: str) -> None:
    frame = source_frame(10, long_text_at=0)
    settings = settings_for(backend="endpoint", endpoint={"url": vllm_server, "concurrency": 4})
    with Rewriter(settings, tiny_model) as rewriter:
        result = rewriter.rewrite(frame)
    assert result.kept.height + result.removed.height == result.stats.prompts > 10
    assert result.stats.prompts_cut >= 1
    assert dict(result.kept.schema) == SYNTHETIC_SCHEMA
    assert (result.kept["output_tokens"] > 0).all() and (result.kept["prompt_tokens"] <= TINY_MAX_MODEL_LEN).all()


@pytest.fixture
def flaky_proxy(vllm_server: str) -> Iterator[tuple[str, dict[str, int]]]:
    """Forwards to the vLLM server until `state["budget"]` completions were served, then answers
    500: a server that dies mid-partition."""
    state = {"budget": 0, "served": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._forward(None)

        def do_POST(self) -> None:
            with lock:
                allowed = state["served"] < state["budget"]
                state["served"] += allowed
            if not allowed:
                self.send_response(500)
                self.end_headers()
                return
            self._forward(self.rfile.read(int(self.headers["Content-Length"])))

        def _forward(self, body: bytes | None) -> None:
            target = vllm_server.removesuffix("/v1") + self.path
            request = urllib.request.Request(target, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = response.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()


@pytest.mark.vllm
def test_endpoint_failing_mid_partition_keeps_finished_shards(
    tiny_model: Path, vllm_server: str, flaky_proxy, tmp_path: Path
) -> None:
    proxy_url, state = flaky_proxy
    frames = [source_frame(4, start=4 * i) for i in range(3)]
    store = upstream_store(tmp_path, frames)
    settings = settings_for(backend="endpoint", endpoint={"url": proxy_url, "retries": 1, "backoff_s": 0.05})
    with Rewriter(settings, tiny_model) as rewriter:
        state["budget"] = sum(recipe.select(frames[0]).sum() for recipe in rewriter.recipes)  # shard 0's prompts
        with pytest.raises(EndpointError, match="HTTP 500"):
            run_partition(store, rewriter)
    assert [n.split("-")[1] for n in staged_notes(store)] == ["00000"]
    assert store.read_manifest(ASSET, PARTITION) is None

    direct = settings_for(backend="endpoint", endpoint={"url": vllm_server})
    with Rewriter(direct, tiny_model) as rewriter:
        output = run_partition(store, rewriter)
    assert output.stats.shards_reused == 1 and output.stats.shards_generated == 2
    kept = pl.concat(store.iter_frames(output.manifest))
    assert set(kept["source_doc_id"]) <= set(pl.concat(frames)["doc_id"])
    assert kept.height + output.manifest.rows_of(REMOVED) == output.stats.prompts
    assert output.manifest.rows_of(DOCUMENTS) == kept.height


@pytest.mark.vllm
def test_smollm2_rewrite_keeps_the_key_facts_of_a_known_paragraph(smollm2_model: Path, smollm2_backend) -> None:
    """A real instruct model, greedy: the encyclopedic rewrite names the tower, its place, engineer
    and year, in words of its own (not a copy), and passes the post-filter."""
    paragraph = (
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
        "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889 as the "
        "centrepiece of the 1889 World's Fair. Although initially criticised by some of France's leading artists "
        "and intellectuals for its design, it has since become a global cultural icon of France."
    )
    frame = source_frame(1).with_columns(pl.lit(paragraph).alias("text"), pl.lit("en").alias("language"))
    greedy = {"temperature": 0.0, "max_tokens": 160}
    settings = settings_for(max_model_len=SMOLLM2_MAX_MODEL_LEN, recipes={"encyclopedic": {"sampling": greedy}})
    result = Rewriter(settings, smollm2_model, backend=smollm2_backend).rewrite(frame)
    assert result.removed.height == 0, result.removed.to_dicts()
    (row,) = result.kept.to_dicts()
    text = row["text"]
    for fact in ("Eiffel", "Paris", "1889"):
        assert fact in text, text
    assert row["finish_reason"] == "stop" and row["source_overlap"] < 0.9 and row["length_ratio"] > 0.3, text
