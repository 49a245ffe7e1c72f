"""Rewriting benchmark: our engine's full path against a bare `LLM.generate` loop, same engine.

Why: the rewriting stage wraps vLLM in selection, prompt building and fitting, post-filtering and
row building (provenance, hashes, Parquet-ready frames). That wrapping must not cost throughput:
the goal is >= 0.9x the output tokens/s of calling `LLM.generate` directly.

- ours: `Rewriter.rewrite(frame)` on a shard of source documents, everything timed: recipe
  selection, tokenization and cutting to the context, generation, post-filter, output rows;
- bare: `llm.generate(prompts, sampling_params)` on the very same prompt strings (decoded from
  our token ids, so vLLM re-tokenizes them to the same ids) with the same per-row seeded sampling
  parameters, built before the clock starts.

Both run on ONE engine (started once, not timed, warmed up first), interleaved, `--repeats`
times; the best wall time of each counts (the machine is shared and noisy). With the same seeds
both sides generate the same tokens, which the table shows. "main CPU s" is the CPU time of this
process only (vLLM's engine runs in child processes): what our wrapping costs, read without the
noise of other load on the machine (bare's is vLLM's own tokenization and output handling).

    .venv/bin/python bench/rewrite.py [--model DIR] [--documents 256] [--max-tokens 64] [--repeats 3]

Without --model, the tiny locally built model is used (random weights: the text is noise, the
token counts and timings are real).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository root in place of bench/ (the script's directory): bench/ holds scripts, and one
# named like a standard module (e.g. tokenize.py) would shadow it for every import below.
sys.path[0] = str(ROOT)

import polars as pl  # noqa: E402

from resources.common.schemas import doc_id_of  # noqa: E402
from resources.llm.model import inspect_model  # noqa: E402
from resources.llm.tiny_model import build_tiny_model  # noqa: E402
from resources.llm.vllm_backend import VLLMBackend  # noqa: E402
from resources.rewrite.recipes import row_seed  # noqa: E402
from resources.rewrite.rewriter import Rewriter, RewriteSettings  # noqa: E402

REFERENCE_TEXT = ROOT / "data" / "reference" / "wikitext2_reference.txt"


def documents(count: int) -> pl.DataFrame:
    """Source documents with full provenance: paragraphs of the shipped reference text."""
    paragraphs = [line.strip() for line in REFERENCE_TEXT.read_text().splitlines() if len(line.split()) > 40]
    texts = [paragraphs[i % len(paragraphs)] for i in range(count)]
    return pl.DataFrame(
        {
            "doc_id": [doc_id_of(f"{i} {text}") for i, text in enumerate(texts)],
            "text": texts,
            "url": [f"https://bench.example.org/{i}" for i in range(count)],
            "domain": ["bench.example.org"] * count,
            "crawl": ["CC-BENCH"] * count,
            "crawl_batch": ["bench"] * count,
            "warc_path": ["bench.warc.gz"] * count,
            "warc_record_id": [f"<urn:uuid:{i:032x}>" for i in range(count)],
            "fetch_time": [datetime(2024, 1, 1, tzinfo=UTC)] * count,
            "language": ["en"] * count,
        },
        schema_overrides={"fetch_time": pl.Datetime("us", "UTC")},
    )


def bare_inputs(rewriter: Rewriter, frame: pl.DataFrame) -> tuple[list[str], list[object]]:
    """The prompts and sampling parameters ours generates, as a plain vLLM user would pass them."""
    from vllm import SamplingParams

    prompts, params = [], []
    texts, doc_ids = frame["text"].to_list(), frame["doc_id"].to_list()
    for recipe in rewriter.recipes:
        rows = recipe.select(frame).arg_true().to_list()
        for row, prompt in zip(rows, rewriter.prompts.build(recipe, [texts[i] for i in rows]), strict=True):
            prompts.append(rewriter.tokenizer.decode(prompt.token_ids, skip_special_tokens=True))
            s = recipe.sampling
            seed = row_seed(s.seed, doc_ids[row])
            params.append(SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=seed))
    return prompts, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: build the tiny model)")
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    model = args.model or build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-rewrite-")) / "tiny")
    sampling = {"max_tokens": args.max_tokens}
    settings = RewriteSettings.model_validate(
        {
            "max_model_len": args.max_model_len,
            "recipes": {"encyclopedic": {"sampling": sampling}, "qa_pairs": {"sampling": sampling}},
            "post_filter": {"drop_truncated": False},
            "vllm": {"gpu_memory_utilization": args.gpu_memory_utilization},
        }
    )
    frame = documents(args.documents)
    started = time.perf_counter()
    backend = VLLMBackend.start(inspect_model(model), settings.vllm, args.max_model_len)
    print(f"engine started in {time.perf_counter() - started:.1f} s (not timed below)", flush=True)
    try:
        rewriter = Rewriter(settings, model, backend=backend)
        prompts, params = bare_inputs(rewriter, frame)
        backend.llm.generate(prompts[:32], params[:32], use_tqdm=False)  # warm-up
        best: dict[str, tuple[float, float, int]] = {}  # (wall s, main-process CPU s, output tokens)
        kept = 0
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            result = rewriter.rewrite(frame)
            ours = (time.perf_counter() - t0, time.process_time() - c0, result.stats.output_tokens)
            kept = result.kept.height
            t0, c0 = time.perf_counter(), time.process_time()
            outputs = backend.llm.generate(prompts, params, use_tqdm=False)
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            bare = (time.perf_counter() - t0, time.process_time() - c0, tokens)
            for name, run in (("ours", ours), ("bare", bare)):
                best[name] = min(best.get(name, run), run)
    finally:
        backend.close()

    rate = {name: tokens / seconds for name, (seconds, _, tokens) in best.items()}
    print(f"\n{len(prompts)} prompts ({args.documents} documents x 2 recipes), max_tokens {args.max_tokens}, "
          f"best of {args.repeats}; ours kept {kept} rows after the post-filter\n")  # fmt: skip
    print(f"| {'path':<44} | {'output tokens':>13} | {'wall s':>6} | {'main CPU s':>10} | {'output tok/s':>12} "
          f"| {'vs bare':>7} |")  # fmt: skip
    print(f"|{'-' * 46}|{'-' * 15}|{'-' * 8}|{'-' * 12}|{'-' * 14}|{'-' * 9}|")
    labels = {
        "bare": "bare LLM.generate (reference)",
        "ours": "ours: Rewriter.rewrite (select..post-filter)",
    }
    for name in ("bare", "ours"):
        seconds, cpu, tokens = best[name]
        ratio = rate[name] / rate["bare"]
        print(f"| {labels[name]:<44} | {tokens:>13} | {seconds:>6.2f} | {cpu:>10.2f} | {rate[name]:>12.0f} "
              f"| {ratio:>6.2f}x |")  # fmt: skip
    ratio = rate["ours"] / rate["bare"]
    print(f"\nratio ours / bare: {ratio:.3f} (goal >= 0.9): {'PASS' if ratio >= 0.9 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"best": best, "tokens_per_s": rate, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
