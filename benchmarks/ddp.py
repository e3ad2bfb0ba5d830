"""Data-parallel scaling of enstack's trainer on torch.distributed.

What it measures, in one run on this machine:

* **scaling efficiency**: training throughput (samples/s of the optimizer steps, from
  the trainer's log records, the first steps left out as warm-up) of N ranks x 1
  intra-op thread against 1 process x 1 thread on the same global batch, the same
  data and model: ``(throughput_N / throughput_1) / N``. 1.0 is perfect scaling.
* **hidden all-reduce share**: each rank's gradient all-reduce starts bucket by
  bucket during backward. The time finish_sync still waits after backward
  (``allreduce_wait_seconds`` in the log records) is the communication backward did
  not hide. The same N-rank run with ``ENSTACK_DDP_OVERLAP=0`` starts every bucket
  after backward, so its wait is all of it: ``hidden = 1 - wait_overlap / wait_serial``.

Ranks are launched through torchrun (``python -m torch.distributed.run``) with Gloo on
CPU (``--device cuda`` uses NCCL, one GPU per rank). On a 2-core machine 2 ranks x 1
thread use both cores, so other work on the machine lowers the efficiency: the
1-minute load average is printed.

    python benchmarks/ddp.py                        # 2 ranks, 1,200 synthetic functions, ~3 min
    python benchmarks/ddp.py --examples 400         # quick smoke run
    python benchmarks/ddp.py --juliet ../shared/data/juliet/juliet_c.jsonl.gz --examples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
MODEL = {"model_type": "roberta", "vocab_size": 1000, "hidden_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 512, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
         "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 258, "type_vocab_size": 1,
         "pad_token_id": 1, "layer_norm_eps": 1e-05, "initializer_range": 0.02}

WORKER = """
import json, sys
import enstack
overrides, out = json.loads(sys.argv[1]), sys.argv[2]
records = []
def on_record(r):
    if r["event"] == "log":
        records.append({k: r.get(k) for k in ("step", "samples_per_second", "allreduce_wait_seconds")})
cfg = enstack.load_config("configs/demo.yaml", overrides=overrides)
trainer = enstack.Trainer(cfg)
trainer.fit(resume=False, callback=on_record, progress=False, tensorboard=False, plots=False)
if trainer.is_writer:
    with open(out, "w") as f:
        json.dump(records, f)
"""


def write_data(args, work: Path) -> Dict[str, Any]:
    from enstack.data import synthetic

    data = work / "functions.jsonl"
    if args.juliet:
        import gzip
        import random

        opener = gzip.open if args.juliet.endswith(".gz") else open
        with opener(args.juliet, "rt") as f:
            rows = [json.loads(line) for line in f]
        rows = random.Random(args.seed).sample(rows, min(args.examples, len(rows)))
        with open(data, "w") as f:
            for r in rows:
                f.write(json.dumps({"func": r["func"], "label": str(r.get("cwe", r.get("label")))}) + "\n")
    else:
        synthetic.write_jsonl(data, args.examples, seed=args.seed)
    (work / "model.json").write_text(json.dumps(MODEL))
    return {"data.train": str(data), "data.text_column": "func", "data.label_columns": ["label"],
            "data.label_policy": "class", "model.name_or_path": str(work / "model.json"),
            "model.max_length": args.max_length, "model.tokenizer.vocab_size": MODEL["vocab_size"],
            "train.batch_size": args.batch_size, "train.grad_accum": args.grad_accum, "train.epochs": 1,
            "train.logging_steps": 1, "train.eval_strategy": "epoch", "train.save_steps": 10**9,
            "train.learning_rate": 5e-4, "run.num_threads": 1, "run.device": args.device,
            "run.seed": args.seed}


def run(args, work: Path, name: str, ranks: int, overrides: Dict[str, Any], overlap: bool = True) -> List[dict]:
    out = work / f"{name}.json"
    script = work / "worker.py"
    script.write_text(WORKER)
    ov = dict(overrides, **{"run.output_dir": str(work / name)})
    env = dict(os.environ, OMP_NUM_THREADS="1", ENSTACK_DDP_OVERLAP="1" if overlap else "0")
    if ranks == 1:
        cmd = [sys.executable, str(script), json.dumps(ov), str(out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
               str(args.port), str(script), json.dumps(ov), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def throughput(records: List[dict], warmup: int) -> float:
    rates = [r["samples_per_second"] for r in records[warmup:]] or [r["samples_per_second"] for r in records]
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--examples", type=int, default=1200)
    p.add_argument("--juliet", default=None, help="Juliet JSONL(.gz) with func and cwe: a seeded sample of it")
    p.add_argument("--batch-size", type=int, default=32, help="the global batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu (Gloo) or cuda (NCCL, one GPU per rank)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--warmup", type=int, default=3, help="log records (steps) left out at the start")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="enstack-ddp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        overrides = write_data(args, work)
        # Tokenize once, in one process, so no run measures it.
        prep = subprocess.run([sys.executable, "-m", "enstack", "data", "prepare", "configs/demo.yaml",
                               *[f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}"
                                 for k, v in dict(overrides, **{"run.output_dir": str(work / "prep")}).items()]],
                              cwd=REPO, capture_output=True, text=True)
        if prep.returncode != 0:
            sys.exit(f"data prepare failed:\n{prep.stderr[-3000:]}")
        for name in ("one", "overlap", "serial"):
            shutil.copytree(work / "prep", work / name)
        one = run(args, work, "one", 1, overrides)
        overlap = run(args, work, "overlap", args.ranks, overrides)
        serial = run(args, work, "serial", args.ranks, overrides, overlap=False)
        t1, tn = throughput(one, args.warmup), throughput(overlap, args.warmup)
        wait_overlap = sum(r["allreduce_wait_seconds"] or 0 for r in overlap[args.warmup:])
        wait_serial = sum(r["allreduce_wait_seconds"] or 0 for r in serial[args.warmup:])
        load = os.getloadavg()[0]
        print(f"enstack data-parallel ({args.device}, {args.ranks} ranks x 1 thread vs 1 process x 1 thread; "
              f"global batch {args.batch_size}, {len(one)} steps, 1-min load {load:.2f})")
        print(f"  1 process        {t1:9.1f} samples/s")
        print(f"  {args.ranks} ranks          {tn:9.1f} samples/s   speed-up {tn / t1:.2f}x   "
              f"scaling efficiency {tn / t1 / args.ranks:.2f}")
        if wait_serial > 0:
            print(f"  all-reduce wait after backward: {wait_overlap:.3f} s overlapped, {wait_serial:.3f} s serial  "
                  f"-> hidden behind backward {1 - wait_overlap / wait_serial:.2f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
