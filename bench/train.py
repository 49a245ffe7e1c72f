"""Training benchmark: our engine (`resources.train.trainer.train`) against a minimal PyTorch loop.

Why: the engine's memory-mapped mixture loader, LR schedule, clipping, NaN checks and atomic
checkpoints may not cost throughput; the goal is ours / reference >= 1.0x tokens per second. Both
sides build the same model, batch, sequence length, precision (bf16 autocast on GPU, fp32 on CPU),
AdamW and, with --compile, `torch.compile`:

- reference: random token batches made on the device beforehand; per step forward with labels,
  backward, AdamW step, zero_grad, nothing else. Timed from after its first (warm-up) step.
- ours: the whole `train()` call on a token file of random ids, with the default loss read-back
  every 10 steps and one checkpoint at the end; its own `tokens_per_s`, which leaves out the first
  step and checkpoint writes.

MFU uses the same FLOPs per token and peak for both. Runs alternate --repeats times and the best of
each counts (a shared machine is noisy).

    .venv/bin/python bench/train.py --threads 1 --repeats 5                  # steadier on a busy CPU
    .venv/bin/python bench/train.py --device cuda --preset small --seq-len 1024 --batch 16 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from resources.train.config import RunSpec, TrainConfig  # noqa: E402
from resources.train.data import TokenFile, TokenSource  # noqa: E402
from resources.train.presets import build_model, flops_per_token, model_config, total_params  # noqa: E402
from resources.train.throughput import default_peak_flops  # noqa: E402
from resources.train.trainer import train  # noqa: E402


@dataclass
class Rate:
    """Tokens per second of wall time, and per CPU-second of this process: the latter ignores time
    a busy machine gave to other processes (a CPU comparison only: on GPU it measures the host)."""

    wall: float
    cpu: float


def reference_rate(args: argparse.Namespace, device: torch.device, bf16: bool) -> Rate:
    torch.manual_seed(0)
    config = model_config(args.preset, args.vocab, args.seq_len)
    model = build_model(config).to(device).train()
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device) for _ in range(args.steps + 1)]
    start = (0.0, 0.0)
    for i, x in enumerate(batches):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i == 0:  # the warm-up step (compilation, allocator) is not timed
            loss.item()  # a read-back waits for every kernel queued before it
            start = (time.perf_counter(), time.process_time())
    loss.item()
    tokens = args.steps * args.batch * args.seq_len
    return Rate(tokens / (time.perf_counter() - start[0]), tokens / (time.process_time() - start[1]))


def ours_rate(args: argparse.Namespace, token_file: TokenFile, workdir: Path, run: int) -> Rate:
    config = TrainConfig(
        preset=args.preset,
        seq_len=args.seq_len,
        micro_batch_size=args.batch,
        max_steps=args.steps + 1,
        lr=3e-4,  # the reference's
        warmup_steps=2,
        checkpoint_every=10**9,  # only the final step is saved
        device=args.device,
        precision="bf16" if args.device == "cuda" else "fp32",
        compile=args.compile,
    )
    marks: list[tuple[float, float]] = []  # (step, process CPU time) at each loss read-back

    def progress(metrics: dict[str, float]) -> None:
        marks.append((metrics["step"], time.process_time()))

    spec = RunSpec(out_dir=str(workdir / f"ours-{run}"), vocab_size=args.vocab)
    result = train(config, spec, [TokenSource("random", [token_file])], progress=progress)
    (first_step, first_cpu), (last_step, last_cpu) = marks[0], marks[-1]
    return Rate(result.tokens_per_s, (last_step - first_step) * args.batch * args.seq_len / (last_cpu - first_cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--vocab", type=int, default=None, help="default: 8192 on CPU, 50304 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 20 on CPU, 50 on GPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (1 is steadier on a busy machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    args.vocab = args.vocab or (50_304 if on_gpu else 8_192)
    args.steps = args.steps or (50 if on_gpu else 20)
    device = torch.device(args.device)
    bf16 = on_gpu
    if args.threads:
        torch.set_num_threads(args.threads)

    config = model_config(args.preset, args.vocab, args.seq_len)
    flops = flops_per_token(config, args.seq_len)
    peak = default_peak_flops(device, bf16)
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"{args.preset}: {total_params(config) / 1e6:.1f}M params, vocab {args.vocab}, batch {args.batch} x "
        f"{args.seq_len}, {'bf16' if bf16 else 'fp32'}{', compiled' if args.compile else ''}, {name}"
    )

    ours: list[Rate] = []
    reference: list[Rate] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        dtype = "uint16" if args.vocab <= 65_536 else "uint32"
        tokens = np.random.default_rng(0).integers(0, args.vocab, size=4_000_000, dtype=np.int64).astype(dtype)
        tokens.tofile(workdir / "tokens.bin")
        token_file = TokenFile(str(workdir / "tokens.bin"), dtype, "random")
        for run in range(args.repeats):
            ours.append(ours_rate(args, token_file, workdir, run))
            reference.append(reference_rate(args, device, bf16))
            print(f"  run {run + 1}: ours {ours[-1].wall:,.0f} tok/s, reference {reference[-1].wall:,.0f} tok/s")

    best = {
        "ours (resources.train.trainer)": Rate(max(r.wall for r in ours), max(r.cpu for r in ours)),
        "reference (minimal loop)": Rate(max(r.wall for r in reference), max(r.cpu for r in reference)),
    }
    print("\n| system | tokens/s | MFU | ms/step | tokens/CPU-s |\n|---|---:|---:|---:|---:|")
    for label, rate in best.items():
        mfu = f"{flops * rate.wall / peak:.1%}" if peak else "n/a"
        step_ms = args.batch * args.seq_len / rate.wall * 1000
        print(f"| {label} | {rate.wall:,.0f} | {mfu} | {step_ms:.1f} | {rate.cpu:,.0f} |")
    ours_best, reference_best = best.values()
    ratio = ours_best.wall / reference_best.wall
    cpu_ratio = ours_best.cpu / reference_best.cpu
    print(f"\nours / reference: {ratio:.2f}x tokens/s, {cpu_ratio:.2f}x tokens per CPU-second (goal >= 1.0x)")
    if args.json:
        body = {
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "ours": [vars(r) for r in ours],
            "reference": [vars(r) for r in reference],
            "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "peak_flops": peak,
            "flops_per_token": flops,
        }
        args.json.write_text(json.dumps(body, indent=2))


if __name__ == "__main__":
    main()
