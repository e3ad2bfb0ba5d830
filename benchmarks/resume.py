"""Time to resume: from ``fit(resume=True)`` to the first optimizer step, at 0%, 50% and 99% of an epoch.

What it measures: the DESIGN promises that resuming touches no skipped data (an
epoch's batch order is a pure function of seed, epoch and dataset), so getting
back to batch 3,800 of 3,900 should cost what getting back to batch 1 costs, and
under 2 seconds on a large dataset. This script times, on a fresh native trainer
over the same output directory (as a new Colab runtime would build),
``enstack._C.train.Trainer(...).fit(resume=True)`` until its first ``log``
record (``logging_steps=1``: the record comes right after the first optimizer
step). That span contains finding and verifying the checkpoint (manifest and
checksums), loading weights/optimizer/state, building the epoch plan (O(n):
the permutation of all examples, and with ``--group-by-length`` reading every
length), starting the loader at the cursor, and one training step. It is split
at the ``begin`` record (emitted once the checkpoint is loaded) into
"checkpoint" and "plan + loader + first step"; the typical step time of the same
run is printed beside it, so the part that is not training is visible.

How the checkpoints are made (nothing is forged): a token store of
``--examples`` short random sequences (default 1,000,000; lengths 4-16, vocab
256) is written directly with ``enstack._C.data.write_token_store``, and a very
small RoBERTa (hidden 8, 1 layer) is trained through the epoch for real with
batch size 256, i.e. ~3,900 optimizer steps per epoch at 1M examples. The
tiny model and short sequences only make each step cheap so that training
through 99% of an epoch takes a minute or so; the quantities the resume path
could scale with are realistic: 1M examples in the store and in the plan,
~3,900 batches of which up to 99% are skipped. The 0% position is the checkpoint
after the first step (0.03% at 1M). A callback returning False stops training at
the target step, which writes ``checkpoints/recovery`` (and raises
KeyboardInterrupt, caught), and a copy of the checkpoints directory is kept
there. Each measured resume starts from the restored copy of its position and
stops at its first log record; ``--repeats`` resumes per position (default 3),
interleaved across positions, give the noise. Everything runs in one process with a
warm page cache (a Colab runtime resuming from Drive would read the checkpoint
cold; that is not measured here).

    python benchmarks/resume.py                          # 1,000,000 examples (~1.5 min)
    python benchmarks/resume.py --examples 100000        # quick
    python benchmarks/resume.py --examples 100000 --group-by-length
    python benchmarks/resume.py --batch-size 64 --examples 100000   # more batches per epoch

This is a benchmark, not a test: it asserts nothing and only prints numbers.
"""

from __future__ import annotations

import argparse
import os
import sys

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from enstack.config import ENSTACK5_LABELS

TARGET_S = 2.0
NOISE_FLOOR_S = 0.05  # differences below 50 ms count as noise on a shared machine
VOCAB = 256  # ids < 257 are cached Python ints: a million short lists stay small
LABELS = list(ENSTACK5_LABELS)
TINY = {"model_type": "roberta", "vocab_size": VOCAB, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 24, "type_vocab_size": 1,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5, "initializer_range": 0.02,
        "id2label": {str(i): n for i, n in enumerate(LABELS)}}
MAX_LENGTH = 16


def write_store(path: Path, n: int, seed: int, chunk: int = 100_000) -> float:
    """A token store of n random sequences (lengths 4..MAX_LENGTH, first id 0, last id 2)."""
    from enstack._C.data import write_token_store

    rng = random.Random(seed)
    ids: List[List[int]] = []
    for start in range(0, n, chunk):
        for _ in range(min(chunk, n - start)):
            k = rng.randint(4, MAX_LENGTH)
            ids.append([0] + [rng.randrange(3, VOCAB) for _ in range(k - 2)] + [2])
    labels = [rng.randrange(len(LABELS)) for _ in range(n)]
    start = time.perf_counter()
    write_token_store(str(path), ids, labels, VOCAB, MAX_LENGTH, "bench-random")
    return time.perf_counter() - start


def options(args, out: Path) -> Dict[str, Any]:
    return {"output_dir": str(out), "seed": args.seed, "num_threads": args.threads, "device": "cpu", "epochs": 1,
            "batch_size": args.batch_size, "grad_accum": 1, "learning_rate": 1e-3, "weight_decay": 0.01,
            "warmup_ratio": 0.0, "warmup_steps": 0, "lr_schedule": "linear", "max_grad_norm": 1.0,
            "precision": "fp32", "eval_strategy": "epoch", "eval_steps": 0, "save_steps": 0,
            "save_total_limit": 2, "logging_steps": 1, "metric_for_best": "loss", "greater_is_better": False,
            "patience": 0, "threshold": 0.0, "group_by_length": args.group_by_length, "pad_id": 1,
            "max_length": MAX_LENGTH, "label_names": LABELS, "config_fingerprint": "bench-resume"}


class Run:
    """One fit() on a fresh native trainer: stops (recovery checkpoint) at log step `stop_at`
    or, with stop_at None, at the first log record; records when begin and each log came."""

    def __init__(self, args, store_path: Path, out: Path):
        import torch

        import enstack
        from enstack._C import train as native
        from enstack._C.data import TokenStore

        t0 = time.perf_counter()
        store = TokenStore(str(store_path))
        torch.manual_seed(args.seed)
        model = enstack.model.from_config(TINY)
        self.trainer = native.Trainer(model, store, None, options(args, out))
        self.construct_s = time.perf_counter() - t0
        self.begin: Optional[Dict[str, Any]] = None
        self.t_begin = self.t_first_log = None
        self.first_step = None
        self.log_times: List[float] = []

    def fit(self, resume: bool, stop_at: Optional[int]) -> float:
        def on_record(r):
            now = time.perf_counter()
            if r["event"] == "begin":
                self.begin, self.t_begin = r, now
            elif r["event"] == "log":
                self.log_times.append(now)
                if self.t_first_log is None:
                    self.t_first_log, self.first_step = now, r["step"]
                if stop_at is None or r["step"] >= stop_at:
                    return False
            return None

        self.t_start = time.perf_counter()
        try:
            self.trainer.fit(resume, on_record)
        except KeyboardInterrupt:
            pass
        return self.t_first_log - self.t_start

    def step_time(self) -> Optional[float]:
        gaps = [b - a for a, b in zip(self.log_times, self.log_times[1:])]
        return statistics.median(gaps) if gaps else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=1_000_000, help="examples in the store (default 1,000,000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="measured resumes per position (default 3)")
    p.add_argument("--group-by-length", action="store_true", help="length-grouped epoch plan (reads all lengths)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: robust on a shared machine)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default=None, help="keep the store and checkpoints here (default: a temp dir)")
    args = p.parse_args()

    import logging

    import torch

    import enstack

    logging.getLogger("enstack").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    own_tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        own_tmp = tempfile.TemporaryDirectory(prefix="enstack-bench-resume-")
        work = Path(own_tmp.name)
    try:
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        store_path = work / "train.tokens"
        write_s = write_store(store_path, args.examples, args.seed)
        build_s = time.perf_counter() - t0
        out = work / "run"
        batches = -(-args.examples // args.batch_size)
        positions = [("0%", 1), ("50%", batches // 2), ("99%", (batches * 99) // 100)]
        if not 1 < positions[1][1] < positions[2][1] < batches - 1:
            raise SystemExit(f"{batches} batches per epoch are too few for these positions; lower --batch-size")

        # Train for real, stopping at each position (a recovery checkpoint), and keep a copy of the
        # checkpoints directory there. Then measure: each resume starts from the restored copy, and
        # the positions are interleaved (0, 50, 99, 0, 50, 99, ...) so drift hits all alike.
        t_train = time.perf_counter()
        snapshots: Dict[str, Path] = {}
        step_times: List[float] = []
        train_steps = 0
        for i, (name, step) in enumerate(positions):
            run = Run(args, store_path, out)
            run.fit(resume=i > 0, stop_at=step)
            train_steps += len(run.log_times)
            if run.step_time() is not None:
                step_times.append(run.step_time())
            snapshots[name] = work / f"checkpoints-{name.rstrip('%')}"
            shutil.copytree(out / "checkpoints", snapshots[name])
        total_s = time.perf_counter() - t_train
        measured: Dict[str, List[Run]] = {name: [] for name, _ in positions}
        for r in range(args.repeats):
            for name, _ in positions:
                shutil.rmtree(out / "checkpoints")
                shutil.copytree(snapshots[name], out / "checkpoints")
                run = Run(args, store_path, out)
                run.fit(resume=True, stop_at=None)
                assert run.begin is not None and run.begin["resumed"], "fit(resume=True) did not resume"
                measured[name].append(run)
        rows = list(measured.items())

        step_s = statistics.median(step_times) if step_times else float("nan")
        print(f"resume time: enstack {enstack.__version__}, torch {torch.__version__}, {args.threads} threads")
        print(f"  store   {args.examples:,} random sequences (lengths 4-{MAX_LENGTH}, vocab {VOCAB}), written in "
              f"{write_s:.1f} s ({build_s:.1f} s with generating them); {store_path.stat().st_size / 1e6:.0f} MB")
        print(f"  run     RoBERTa hidden 8 x 1 layer, batch {args.batch_size}: {batches:,} steps per epoch; "
              f"group_by_length {args.group_by_length}; trained for real through {train_steps:,} steps "
              f"({total_s:.0f} s, median step {1000 * step_s:.1f} ms)")
        print(f"  machine {os.cpu_count()} cores; 1-minute load average {load_before:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after (other work on the machine slows steps and adds noise)")
        print(f"  measure fresh native Trainer per resume (construction incl. opening the store: not counted); "
              f"fit(resume=True) -> first log record (after the first optimizer step); {args.repeats} resumes "
              f"per position from a copy of its checkpoint, positions interleaved, warm page cache")
        print()
        print(f"  {'position':<9} {'batch cursor':>14} {'to first step s':>16} {'checkpoint s':>13} "
              f"{'plan+loader+step s':>19} {'construct s':>12}")
        medians = []
        spreads = []
        for name, runs in rows:
            totals = [r.t_first_log - r.t_start for r in runs]
            ckpt = [r.t_begin - r.t_start for r in runs]
            rest = [r.t_first_log - r.t_begin for r in runs]
            med = statistics.median(totals)
            medians.append(med)
            spreads.append(max(totals) - min(totals))
            cursor = runs[0].begin["batch_cursor"]
            print(f"  {name:<9} {cursor:>6,}/{batches:<7,} {med:>9.3f} [{min(totals):.3f}-{max(totals):.3f}] "
                  f"{statistics.median(ckpt):>8.3f} {statistics.median(rest):>19.3f} "
                  f"{statistics.median([r.construct_s for r in runs]):>12.3f}")
        print()
        between = max(medians) - min(medians)
        noise = max(spreads)
        tolerance = max(noise, NOISE_FLOOR_S)
        flat = between <= tolerance
        print(f"  spread of the medians across positions {1000 * between:.0f} ms; largest spread within a position "
              f"{1000 * noise:.0f} ms; tolerance max(that, {1000 * NOISE_FLOOR_S:.0f} ms) -> "
              f"{'within noise' if flat else 'NOT within noise: resume time depends on the position'}")
        worst = max(medians)
        print(f"  slowest median {worst:.3f} s vs target {TARGET_S:.1f} s: {'under' if worst < TARGET_S else 'OVER'} "
              f"the target (one training step is ~{step_s:.3f} s of it)")
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


if __name__ == "__main__":
    main()
