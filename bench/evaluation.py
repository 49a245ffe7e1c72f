"""Evaluation benchmark: our bits-per-byte scorer against lm-evaluation-harness's rolling log-likelihood.

Why: `resources.evaluate.scoring.score_texts` gives every checkpoint its bits-per-byte on held-out text.
lm-evaluation-harness computes the same kind of number for its `wikitext` task (word perplexity,
byte perplexity, bits_per_byte from `loglikelihood_rolling`). Ours must be at least as fast on
the same model and text, and agree with it up to the documented difference in what is scored.

Both sides get the same checkpoint (fp32, --device), the same documents (read once with
`load_eval_set`, so both see identical strings), the same context length (--seq-len; default the
checkpoint's training context), the same batch size and the same torch threads:

- ours: `score_texts(checkpoint, texts, max_tokens=<all>, batch_size, seq_len)`: each document as
  [EOS] + tokens + [EOS], in non-overlapping windows of seq_len predictions, cross-entropy summed.
- reference: lm-eval 0.4.13's `HFLM(pretrained=dir, tokenizer=dir, max_length=seq_len, batch_size,
  dtype="float32")`, loaded by `resources.evaluate.lm_eval_tasks` (offline), and
  `lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), i), ...])` called
  directly; bits_per_byte = -sum(ll) / ln 2 / UTF-8 bytes, through lm-eval's own `bits_per_byte` and
  `weighted_perplexity` aggregations and its `count_bytes` / `count_words`, as its wikitext task does
  (without that task's wikitext detokenizer: both sides score the file's text as it is).

Only the scoring calls are timed (tokenization is inside both; model loading is not). Rounds
alternate the order (ours first, then the reference first, ...) after one untimed warm-up call
each; the median of --repeats rounds counts. CPU s is this process's CPU time (all threads),
steadier than wall time on a shared machine.

The two bits-per-byte values differ slightly, by design (`ours - reference` is printed, split in two):
- ours also predicts each document's closing EOS (knowing where a document ends is part of the
  model; it adds no bytes); lm-eval predicts the text tokens only. Measured exactly here.
- a document longer than seq_len: both score full windows identically (one token of context),
  but lm-eval scores the last, partial window with the preceding tokens as context (a full-length
  window) where ours starts it without context. That is the rest of the difference; it is zero
  when no document is longer than seq_len.

The checkpoint: --checkpoint DIR (one of our run or step directories, or any Hugging Face causal LM
directory with a fast tokenizer); else the demo's latest (`.data/checkpoint/__all__/_manifest.json`);
else (or with --build) a tiny one trained here in a few seconds (tokenizer + tiny preset), which only
tests the plumbing: an untrained model's numbers mean little.

    .venv/bin/python -P bench/evaluation.py                     # demo checkpoint, wikitext2_valid_small
    .venv/bin/python -P bench/evaluation.py --quick             # 24 documents, one round
    .venv/bin/python -P bench/evaluation.py --checkpoint DIR --seq-len 512 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resources.common.cpus import available_cpus  # noqa: E402
from resources.evaluate.lm_eval_tasks import LmEvalSettings, import_lm_eval, load_harness_model, offline  # noqa: E402
from resources.evaluate.scoring import (  # noqa: E402
    EvalTexts,
    LoadedCheckpoint,
    load_checkpoint,
    load_eval_set,
    prediction_windows,
    score_texts,
)
from resources.evaluate.settings import EvalSetSpec  # noqa: E402

REFERENCE = "lm-eval HFLM.loglikelihood_rolling"
OURS = "ours (resources.evaluate.scoring)"
DEFAULT_TEXT = ROOT / "data" / "eval" / "wikitext2_valid_small.txt"
DEMO_MANIFEST = ROOT / ".data" / "checkpoint" / "__all__" / "_manifest.json"
BUILD_TEXT = ROOT / "data" / "reference" / "wikitext2_reference.txt"
QUICK_DOCS = 24
GOAL = 1.0  # ours at least as fast as the reference
ALL_TOKENS = 10**15  # score_texts' budget: every document


@dataclass
class Contender:
    name: str
    run: Callable[[], Any]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    result: Any = None

    def measure(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.result = self.run()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


# --------------------------------------------------------------------------- the checkpoint


def demo_checkpoint() -> Path | None:
    """The checkpoint asset's latest step, as the demo left it (`stats.checkpoint` is relative to
    the manifest's directory)."""
    if not DEMO_MANIFEST.is_file():
        return None
    relative = json.loads(DEMO_MANIFEST.read_text()).get("stats", {}).get("checkpoint")
    path = DEMO_MANIFEST.parent / relative if relative else None
    return path if path is not None and path.is_dir() else None


def build_checkpoint(workdir: Path, steps: int) -> Path:
    """A tiny checkpoint of our own training loop: a byte-level BPE of 1024 and the tiny preset,
    trained `steps` steps on the reference WikiText text."""
    from resources.filter.text_sources import read_documents
    from resources.llm.tiny_model import train_tiny_checkpoint

    texts = read_documents(str(BUILD_TEXT))
    return train_tiny_checkpoint(
        texts, workdir, vocab_size=1024, seq_len=128, micro_batch_size=8, steps=steps, device="cpu"
    )


# --------------------------------------------------------------------------- the two scorers


def ours(checkpoint: LoadedCheckpoint, texts: EvalTexts, seq_len: int, batch_size: int) -> Callable[[], Any]:
    def run() -> Any:
        return score_texts(checkpoint, texts, max_tokens=ALL_TOKENS, batch_size=batch_size, seq_len=seq_len)

    return run


def reference(lm: Any, documents: list[str]) -> Callable[[], list[float]]:
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=i)
        for i, text in enumerate(documents)
    ]

    def run() -> list[float]:
        # HFLM passes disable_tqdm=False to its inner per-batch calls whatever we ask: their progress
        # bars still run (and count), they are just not shown.
        with contextlib.redirect_stderr(io.StringIO()):
            return [float(ll) for ll in lm.loglikelihood_rolling(requests, disable_tqdm=True)]

    return run


@torch.inference_mode()
def closing_eos_nats(checkpoint: LoadedCheckpoint, documents: list[str], seq_len: int, batch_size: int) -> float:
    """The NLL ours gives the closing EOS of every document: the last prediction of each document's
    last window, exactly as `score_texts` builds it (not timed; explains part of the difference)."""
    tokenizer = checkpoint.tokenizer
    eos = tokenizer.eos_id
    encoded = tokenizer.tokenizer.encode_batch(documents, add_special_tokens=False)
    lasts = [prediction_windows([np.array([eos, *e.ids, eos], dtype=np.int64)], seq_len)[-1] for e in encoded if e.ids]
    lasts.sort(key=len, reverse=True)
    total = 0.0
    for start in range(0, len(lasts), batch_size):
        batch = lasts[start : start + batch_size]
        inputs = np.zeros((len(batch), len(batch[0]) - 1), dtype=np.int64)
        for row, window in enumerate(batch):
            inputs[row, : len(window) - 1] = window[:-1]
        logits = checkpoint.model(input_ids=torch.from_numpy(inputs).to(checkpoint.device)).logits.float()
        at = torch.tensor([len(w) - 2 for w in batch], device=logits.device)
        log_probs = torch.log_softmax(logits[torch.arange(len(batch), device=logits.device), at], dim=-1)
        total -= float(log_probs[:, eos].sum())
    return total


# --------------------------------------------------------------------------- report


def report(
    contenders: list[Contender], lm: Any, documents: list[str], context: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.api.task import PerplexityTask

    mine, theirs = contenders
    score = mine.result
    lls: list[float] = theirs.result
    byte_counts = [PerplexityTask.count_bytes(d) for d in documents]
    word_counts = [PerplexityTask.count_words(d) for d in documents]
    ref_tokens = sum(len(lm.tok_encode(d)) for d in documents)
    ref_bpb = bits_per_byte(list(zip(lls, byte_counts, strict=True)))
    ref_nll = -sum(lls)
    words = sum(word_counts)
    if score.bytes != sum(byte_counts):
        raise SystemExit(f"the scorers saw different texts: {score.bytes} bytes (ours) vs {sum(byte_counts)}")
    rows = {
        mine.name: {
            "predictions": score.tokens,
            "nll_nats": score.nll_nats,
            "bits_per_byte": score.bits_per_byte,
            "byte_perplexity": math.exp(score.nll_nats / score.bytes),
            "word_perplexity": math.exp(score.nll_nats / words),
        },
        theirs.name: {
            "predictions": ref_tokens,
            "nll_nats": ref_nll,
            "bits_per_byte": ref_bpb,
            "byte_perplexity": weighted_perplexity(list(zip(lls, byte_counts, strict=True))),
            "word_perplexity": weighted_perplexity(list(zip(lls, word_counts, strict=True))),
        },
    }
    columns = (
        ("predicted", 9), ("median s", 8), ("best s", 7), ("CPU s", 6), ("tokens/s", 8), ("vs ref", 7),
        ("bits/byte", 9), ("byte ppl", 8), ("word ppl", 9),
    )  # fmt: skip
    header = f"{'system':36}" + "".join(f" {name:>{width}}" for name, width in columns)
    lines = [header, "-" * len(header)]
    ref_median = statistics.median(theirs.wall)
    for c in contenders:
        row = rows[c.name]
        median = statistics.median(c.wall)
        row.update(
            walls=c.wall,
            cpus=c.cpu,
            median_wall_s=median,
            best_wall_s=min(c.wall),
            median_cpu_s=statistics.median(c.cpu),
            tokens_per_s=row["predictions"] / median,
            vs_reference=ref_median / median,
        )
        lines.append(
            f"{c.name:36} {row['predictions']:>9,} {median:>8.2f} {min(c.wall):>7.2f} {row['median_cpu_s']:>6.1f} "
            f"{row['tokens_per_s']:>8,.0f} {row['vs_reference']:>6.2f}x {row['bits_per_byte']:>9.4f} "
            f"{row['byte_perplexity']:>8.4f} {row['word_perplexity']:>9.2f}"
        )
    ratio = rows[mine.name]["vs_reference"]
    cpu_ratio = statistics.median(theirs.cpu) / statistics.median(mine.cpu)
    diff = score.bits_per_byte - ref_bpb
    eos_bpb = context["closing_eos_nats"] / math.log(2) / score.bytes
    text_agree = score.tokens - score.documents == ref_tokens
    met = "met" if ratio >= GOAL else "MISSED"
    lines += [
        f"predicted: tokens scored (ours: text tokens + one closing EOS per document); tokens/s: predicted / "
        f"median wall s of {context['repeats']} alternating rounds",
        f"ours / reference: {ratio:.2f}x (reference median s / ours median s), {cpu_ratio:.2f}x in CPU s "
        f"(goal >= {GOAL:.1f}x: {met})",
        f"bits/byte: ours {score.bits_per_byte:.5f}, reference {ref_bpb:.5f}, ours - reference {diff:+.5f} "
        f"({diff / ref_bpb:+.3%} relative)",
        f"  closing EOS (ours only, {score.documents} predictions, no bytes): {eos_bpb:+.5f}",
        f"  last partial windows (ours: no context; lm-eval: a full seq_len window), "
        f"{context['long_documents']} documents > seq_len: {diff - eos_bpb:+.5f}",
        f"text tokens: ours {score.tokens - score.documents:,}, reference {ref_tokens:,} "
        f"({'same tokenization' if text_agree else 'TOKENIZATIONS DIFFER'}); {words:,} words, {score.bytes:,} bytes",
        f"load average at the end: {os.getloadavg()[0]:.1f}",
    ]
    summary = {
        **context,
        "rows": rows,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "bits_per_byte_difference": diff,
        "relative_difference": diff / ref_bpb,
        "closing_eos_bits_per_byte": eos_bpb,
        "goal_met": met == "met",
    }
    return "\n".join(lines), summary


# --------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="run, step or Hugging Face model directory")
    parser.add_argument("--build", action="store_true", help="train a tiny checkpoint here even if the demo's exists")
    parser.add_argument("--build-steps", type=int, default=40, help="training steps of the built checkpoint")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="eval set: text or jsonl file")
    parser.add_argument("--max-docs", type=int, help="score only the first N documents")
    parser.add_argument("--seq-len", type=int, help="context (predictions per window); default: the checkpoint's")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass, both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, both sides")
    parser.add_argument("--threads", type=int, help="torch intra-op threads, both sides; default: one per core")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the median counts")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOCS} documents, one round")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_docs = min(args.max_docs or QUICK_DOCS, QUICK_DOCS)
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads or available_cpus())
    with tempfile.TemporaryDirectory(prefix="bench-evaluation-") as tmp:
        path = args.checkpoint or (None if args.build else demo_checkpoint())
        if path is None:
            started = time.perf_counter()
            path = build_checkpoint(Path(tmp), args.build_steps)
            print(f"built a tiny checkpoint ({args.build_steps} steps) in {time.perf_counter() - started:.1f} s")
        checkpoint = load_checkpoint(path, device=args.device)
        seq_len = args.seq_len or checkpoint.seq_len
        loaded = load_eval_set(args.text.stem, EvalSetSpec(path=str(args.text)))
        documents = [d for d in loaded.documents[: args.max_docs] if d]
        texts = EvalTexts(loaded.name, documents, loaded.source, loaded.encoding)

        lm_eval = import_lm_eval()
        settings = LmEvalSettings(batch_size=args.batch_size, dtype="float32", model_args={"max_length": seq_len})
        with offline(), contextlib.redirect_stderr(io.StringIO()):  # HFLM's loading bars and warnings
            lm = load_harness_model(lm_eval, checkpoint.path, settings, args.device)
        if lm.prefix_token_id != checkpoint.tokenizer.eos_id:
            print(f"note: lm-eval's prefix token is {lm.prefix_token_id}, our EOS {checkpoint.tokenizer.eos_id}")

        lengths = [len(e.ids) for e in checkpoint.tokenizer.tokenizer.encode_batch(documents, add_special_tokens=False)]
        params = sum(p.numel() for p in checkpoint.model.parameters())
        context = {
            "checkpoint": str(checkpoint.path),
            "params": params,
            "vocab_size": checkpoint.tokenizer.vocab_size,
            "text": str(args.text),
            "documents": len(documents),
            "seq_len": seq_len,
            "long_documents": sum(n > seq_len for n in lengths),
            "batch_size": args.batch_size,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "cores": available_cpus(),
            "repeats": args.repeats,
            "torch": torch.__version__,
            "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?",
            "load_average_start": os.getloadavg()[0],
        }
        print(
            f"checkpoint {checkpoint.path} ({params / 1e6:.2f}M params, vocab {checkpoint.tokenizer.vocab_size})\n"
            f"{args.text.name}: {len(documents)} documents, {sum(lengths):,} tokens (longest {max(lengths):,}; "
            f"{context['long_documents']} > seq_len), seq_len {seq_len}, batch {args.batch_size}, fp32, "
            f"{args.device}, {context['threads']} torch threads, {available_cpus()} cores, "
            f"load average {context['load_average_start']:.1f}",
            flush=True,
        )
        contenders = [
            Contender(OURS, ours(checkpoint, texts, seq_len, args.batch_size)),
            Contender(REFERENCE, reference(lm, documents)),
        ]
        warm_up = documents[:2]  # first calls: allocator, lazy imports, thread pools
        ours(checkpoint, EvalTexts(texts.name, warm_up, texts.source, texts.encoding), seq_len, args.batch_size)()
        reference(lm, warm_up)()
        for round_ in range(args.repeats):
            order = contenders if round_ % 2 == 0 else contenders[::-1]
            for contender in order:
                contender.measure()
            print(
                f"  round {round_ + 1} ({order[0].name.split()[0]} first): "
                + ", ".join(f"{c.name.split()[0]} {c.wall[-1]:.2f} s" for c in contenders),
                flush=True,
            )
        context["closing_eos_nats"] = closing_eos_nats(checkpoint, documents, seq_len, args.batch_size)
        text, summary = report(contenders, lm, documents, context)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
