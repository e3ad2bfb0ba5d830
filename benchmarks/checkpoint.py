"""Checkpoint cost for a RoBERTa-base-sized state: how long training is held per save.

What it measures: a 125M-parameter RoBERTa-base classifier (enstack's own model,
built from the roberta-base config) plus AdamW state (exp_avg, exp_avg_sq, step
per parameter): about 1.5 GB, the state enstack writes at every save point.

  async blocked   how long the training thread is blocked by a save
                  (``enstack._C.ckpt.AsyncSaver``, as the trainer uses it): the save call
                  lays out the files and returns; a copy thread copies weights and
                  moments into reused host buffers while the step's forward and backward
                  run; the step waits for the copy only before the optimizer changes the
                  weights; the write, fsync, checksums and rename happen on the writer
                  thread. Blocked = the save call + the wait for the copy. The first save
                  allocates the buffers and is reported separately; later saves reuse them.
                  The step is one forward + backward + AdamW at --batch x --seq (the same
                  step as the SWA reference).
  step slowdown   how much longer that step takes than a plain one: besides the blocking,
                  the copy and writer threads take CPU and memory bandwidth from a CPU
                  step (on 2 cores a lot); a GPU step loses little to them.
  sync save       the same, with the checkpoint written on the caller's thread (the
                  AsyncSaver with synchronous=True: copy, write, fsync, manifest,
                  rename), measured the same way: what training would wait for
                  without the background writer.
  HF Trainer save what the Hugging Face Trainer writes and waits for at a save:
                  ``safetensors.torch.save_file`` of the model and ``torch.save``
                  of the optimizer state_dict (pickle), on the same state.
  memcpy          copying the same tensors into preallocated host memory: what a save
                  would block for if the copy were made on the training thread (on CUDA
                  it is a device-to-pinned-host DMA instead).
  SWA update      one ``enstack._C.train.SwaAverage.update()`` over the 125M
                  parameters, against one training step of the same model
                  (forward + backward + AdamW at --batch x --seq on this machine).
                  The default is one SWA update per epoch, so its share of an epoch
                  is update / (steps per epoch x step); --steps-per-epoch sets the
                  epoch length used for that share (default: VDISC-sized, 1,270
                  steps of batch 16, as in the design's story). With every_steps=1
                  the worst case is update / step, printed too.

Targets (issue 6): training stalled under 5% of the synchronous save; SWA under 1% of an epoch.
All checkpoints go to --dir (default: a temporary directory on this machine's disk).

    python benchmarks/checkpoint.py
    python benchmarks/checkpoint.py --dir /content/drive/MyDrive/bench   # e.g. on Colab

This is a benchmark, not a test: it asserts nothing and only prints numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROBERTA_BASE = {"model_type": "roberta", "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514,
                "type_vocab_size": 1, "pad_token_id": 1, "layer_norm_eps": 1e-5, "initializer_range": 0.02,
                "num_labels": 5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where checkpoints are written (default: a temp dir)")
    parser.add_argument("--saves", type=int, default=3, help="saves per method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="batch of the SWA reference step")
    parser.add_argument("--seq", type=int, default=128, help="sequence length of the SWA reference step")
    parser.add_argument("--steps-per-epoch", type=int, default=1270)
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_file

    import enstack
    from enstack._C import ckpt
    from enstack._C.train import AdamW, SwaAverage

    torch.set_num_threads(args.threads)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="enstack-bench-ckpt-"))
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = enstack.model.from_config(ROBERTA_BASE)
    params = list(model.named_parameters())
    optimizer = AdamW(params, lr=2e-5, weight_decay=0.01)
    n_params = sum(p.numel() for _, p in params)

    # One real training step gives every AdamW moment a value (and times the SWA reference).
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, ROBERTA_BASE["vocab_size"], (args.batch, args.seq), generator=generator)
    labels = torch.arange(args.batch) % 5

    def train_step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    model.train()
    train_step()
    step_s = statistics.median(train_step() for _ in range(2))
    weights = model.state_dict()
    moments = optimizer.state_tensors()
    files = {"model.safetensors": weights, "optimizer.safetensors": moments}
    state_bytes = sum(t.numel() * t.element_size() for d in files.values() for t in d.values())
    print(f"state: {n_params / 1e6:.1f}M parameters + AdamW = {state_bytes / 2**30:.2f} GiB; writing to {root}")

    def timed_saves(saver, name):
        """Each save as training sees it: the save call, then one training step (the
        copy thread fills the snapshot meanwhile), waiting for the copy before the
        optimizer step changes the weights. Stall = that step's time minus a plain step."""
        stalls, held = [], []
        for i in range(args.saves):
            start = time.perf_counter()
            call, _ = saver.save(root / name / f"step-{i:08d}", i, files, {"trainer_state.json": {"step": i}})
            loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)), labels)
            loss.backward()
            waited = saver.wait_for_snapshots()
            optimizer.step()
            optimizer.zero_grad()
            stalls.append(time.perf_counter() - start - step_s)
            held.append(call + waited)
            saver.flush()  # training would run until the next save point; the writer finishes meanwhile
        events = saver.drain()
        failed = [e for e in events if e["event"] != "save"]
        if failed:
            print(f"{name}: saves failed: {failed}", file=sys.stderr)
        return stalls, held, [e["seconds"] for e in events if e["event"] == "save"]

    async_stalls, async_calls, async_write = timed_saves(ckpt.AsyncSaver(coalesce=False, keep_steps=1), "async")
    sync_stalls, _, _ = timed_saves(ckpt.AsyncSaver(coalesce=False, keep_steps=1, synchronous=True), "sync")

    hf = []
    optimizer_state = {"state": {i: {"exp_avg": moments[f"{n}.exp_avg"], "exp_avg_sq": moments[f"{n}.exp_avg_sq"],
                                     "step": moments[f"{n}.step"]} for i, (n, _) in enumerate(params)},
                       "param_groups": [{"params": list(range(len(params))), "lr": 2e-5}]}
    for i in range(args.saves):
        out = root / "hf" / f"checkpoint-{i}"
        out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        torch.save(optimizer_state, out / "optimizer.pt")
        (out / "trainer_state.json").write_text(json.dumps({"global_step": i}))
        hf.append(time.perf_counter() - start)
        shutil.rmtree(out)

    # The floor of any snapshot: copying the same tensors into already-allocated host memory.
    flat = [t.reshape(-1) for d in files.values() for t in d.values()]
    target = torch.empty(sum(t.numel() * t.element_size() for t in flat), dtype=torch.uint8)
    copies = []
    for _ in range(3):
        start = time.perf_counter()
        offset = 0
        for t in flat:
            n = t.numel() * t.element_size()
            target[offset:offset + n].view(t.dtype).copy_(t)
            offset += n
        copies.append(time.perf_counter() - start)
    memcpy_s = statistics.median(copies)
    del target

    swa = SwaAverage(params)
    swa.update()  # the first update copies; later ones average
    updates = []
    for _ in range(3):
        start = time.perf_counter()
        swa.update()
        updates.append(time.perf_counter() - start)
    swa_s = statistics.median(updates)

    steady = statistics.median(async_stalls[1:]) if len(async_stalls) > 1 else async_stalls[0]
    blocked = statistics.median(async_calls[1:]) if len(async_calls) > 1 else async_calls[0]
    sync_s = statistics.median(sync_stalls)
    hf_s = statistics.median(hf)
    print(f"async: training blocked {blocked:.3f} s per save (save call + waiting for the copy before the "
          f"optimizer step; first save {async_calls[0]:.3f} s)")
    print(f"async: step slowdown   {steady:.3f} s (the step next to the copy and writer threads, minus a plain "
          f"step: CPU contention, large on 2 cores, small when the step runs on a GPU; "
          f"writer thread {statistics.median(async_write):.2f} s per save)")
    print(f"sync save              {sync_s:.2f} s")
    print(f"HF Trainer save        {hf_s:.2f} s (safetensors model + torch.save optimizer; no fsync)")
    print(f"blocked / sync save    {blocked / sync_s:.1%} (target < 5%); step slowdown / sync save {steady / sync_s:.1%}")
    print(f"blocked / HF save      {blocked / hf_s:.1%}")
    print(f"memcpy of the state    {memcpy_s:.3f} s ({state_bytes / memcpy_s / 2**30:.1f} GiB/s): what a save "
          f"would block for if the copy did not overlap the step")
    epoch_s = args.steps_per_epoch * step_s
    print(f"SWA update             {swa_s * 1000:.0f} ms; training step ({args.batch}x{args.seq}) {step_s:.2f} s")
    print(f"SWA share of an epoch  {swa_s / epoch_s:.4%} (one update per epoch of {args.steps_per_epoch} steps; "
          f"target < 1%); every step: {swa_s / step_s:.2%}")
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
