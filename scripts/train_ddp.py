"""Run `resources.train.trainer.train` from a JSON spec: one process, or data parallel under torchrun.

The spec:

    {"config": {...TrainConfig fields...},
     "run": {"out_dir": "runs/a", "vocab_size": 50304, ...RunSpec fields...},
     "sources": [{"name": "web", "weight": 0.9,
                  "files": [{"path": "tok/000.bin", "dtype": "uint16", "data_version": "ab12...",
                             "index": "tok/000.index.parquet"}]}, ...]}

(`config` and `run` are `resources.train.config.TrainConfig` and `RunSpec`; `index` selects a shard's
train split, else `spans`, else the whole file.) Rerunning a command resumes from the latest good checkpoint:

    python scripts/train_ddp.py run.json                                        # one process
    torchrun --standalone --nproc_per_node 8 scripts/train_ddp.py run.json      # one node, 8 GPUs (NCCL)
    torchrun --standalone --nproc_per_node 2 scripts/train_ddp.py run.json      # CPU: 2 processes (gloo)

Several nodes (here 2 x 8 GPUs): run on every node, with the same rendezvous endpoint (a host:port
of one of the nodes, reachable from all) and job id:

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_id run42 \\
        --rdzv_endpoint node0:29500 scripts/train_ddp.py run.json

`run.out_dir` must be a filesystem every node sees (global rank 0 writes the checkpoints; every rank
reads the one to resume from), and the token files must exist at the same paths on every node.
Each rank draws its own batches, so the global batch is micro_batch_size x grad_accum_steps x
world size sequences; resuming with another world size works but changes the data order. On
multi-node NCCL, set NCCL_SOCKET_IFNAME (and the InfiniBand variables) as the cluster requires.

Rank 0 prints the result as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resources.train.config import RunSpec, TrainConfig
from resources.train.data import TokenSource
from resources.train.trainer import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="JSON file with 'config' and 'sources'")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    spec = json.loads(args.spec.read_text())
    config = TrainConfig.model_validate(spec["config"])
    sources = [TokenSource.from_dict(s) for s in spec["sources"]]
    result = train(
        config, RunSpec(**spec["run"]), sources, progress=lambda m: logging.info("progress %s", json.dumps(m))
    )
    if rank == 0:
        print(json.dumps(asdict(result), default=str))


if __name__ == "__main__":
    main()
