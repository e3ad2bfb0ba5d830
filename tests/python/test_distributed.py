"""Data-parallel training on torch.distributed (Gloo, 2 CPU processes on this machine).

The references are invariants: 2 ranks with global batch B against 1 process with batch
B (same samples per update), a run resumed on another number of ranks against one never
interrupted, a SIGKILLed and relaunched 2-rank run against an uninterrupted 2-rank run
(bitwise), and the evaluation gathered from 2 ranks against a single-process evaluation.
Processes are launched as torchrun does (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
environment), by the test itself so that it controls which rank fails or dies; one test
launches through torchrun and the CLI. Every wait is for an event: a process exiting or a
checkpoint reported on disk.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from enstack.data import synthetic
from test_trainer import TINY, overrides

import torch.distributed as dist

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no torch.distributed with Gloo")

RUNNER = textwrap.dedent("""
    import json, os, signal, sys
    import enstack
    ov, stop_step, kill_step = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    if rank == int(os.environ.get("ENSTACK_TEST_FAIL_RANK", "-1")):
        os.environ["ENSTACK_INJECT_OOM_AT_STEP"] = os.environ["ENSTACK_TEST_FAIL_STEP"]
    losses, saved = {}, []
    def on_record(r):
        if r["event"] == "log":
            losses[r["step"]] = r["loss"]
        if r["event"] == "save" and os.path.basename(r.get("path", "")).startswith("step-"):
            saved.append(r["step"])
        if kill_step >= 0 and r["event"] == "log" and r["step"] >= kill_step and saved:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # every rank of this launch at once
        if stop_step >= 0 and r["event"] == "log" and r["step"] == stop_step:
            return False
    cfg = enstack.load_config("configs/demo.yaml", overrides=ov)
    trainer = enstack.Trainer(cfg)
    try:
        result = trainer.fit(resume=True, callback=on_record, progress=False, tensorboard=False, plots=False)
        out = {"result": result.__dict__}
    except KeyboardInterrupt:
        out = {"interrupted": True}
    metrics = trainer.evaluate("validation")  # every rank: the evaluation is sharded
    if rank == 0:
        out["losses"] = losses
        out["metrics"] = metrics
        print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-data")
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=1)  # 130 training examples: a ragged last window
    (root / "tiny.json").write_text(json.dumps(TINY))
    (root / "runner.py").write_text(RUNNER)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data_files, out, world, stop_step=-1, kill_step=-1, more=None, env=None, timeout=600):
    """Runs the runner on `world` ranks (a process group of its own, as torchrun's workers);
    returns (rank 0's parsed result or None, [CompletedProcess-like (rc, stdout, stderr)])."""
    ov = overrides(data_files, out, **{"model.dropout": 0.0, "train.save_steps": 3, **(more or {})})
    port = free_port()
    procs = []
    for rank in range(world):
        e = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port), OMP_NUM_THREADS="1", **(env or {}))
        if world == 1:
            for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                e.pop(key)
        # One process group for the launch (rank 0 leads it), as torchrun's workers: a kill of
        # the group reaches every rank.
        group = procs[0].pid if procs else 0
        procs.append(subprocess.Popen(
            [sys.executable, str(data_files / "runner.py"), json.dumps(ov), str(stop_step), str(kill_step)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=os.getcwd(),
            process_group=group))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        outs.append((p.returncode, stdout, stderr))
    result = None
    for line in outs[0][1].splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    return result, outs


def final(out: Path):
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors"), last.name


def assert_same_weights(a, b):
    # Summation order differs between 1 and 2 ranks (a sum of two partial sums), so the
    # comparison is to float tolerance; the attention key biases get a zero gradient in exact
    # arithmetic (softmax ignores them) and hold noise of ~1e-8, hence the absolute term.
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("accum", [2, 1], ids=["accumulation", "no-accumulation"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(data_files, tmp_path, accum):
    one, outs1 = launch(data_files, tmp_path / "one", 1, more={"train.grad_accum": accum})
    assert one is not None, outs1[0][2]
    two, outs2 = launch(data_files, tmp_path / "two", 2, more={"train.grad_accum": accum})
    assert two is not None and all(rc == 0 for rc, _, _ in outs2), [o[2][-3000:] for o in outs2]
    a_model, a_opt, a_name = final(tmp_path / "one")
    b_model, b_opt, b_name = final(tmp_path / "two")
    assert a_name == b_name
    assert_same_weights(a_model, b_model)
    moments = {k: v for k, v in a_opt.items() if not k.startswith("rng.")}
    assert_same_weights(moments, {k: v for k, v in b_opt.items() if not k.startswith("rng.")})
    assert "rng.cpu.rank1" in b_opt  # rank 1's generator is part of the 2-rank checkpoint
    for step, loss in one["losses"].items():
        assert two["losses"][step] == pytest.approx(loss, rel=1e-6)
    state = json.loads((tmp_path / "two" / "checkpoints" / b_name / "trainer_state.json").read_text())["state"]
    assert state["world_size"] == 2
    # Only rank 0 wrote: one metrics file per evaluation, no second writer's leftovers.
    assert sorted(p.name for p in (tmp_path / "two" / "metrics").glob("eval-step-*.json")) == \
        sorted(p.name for p in (tmp_path / "one" / "metrics").glob("eval-step-*.json"))


def test_evaluation_gathered_from_two_ranks_equals_one_process(data_files, tmp_path):
    """The same weights scored by 1 process and by 2 ranks (each its share of the batches,
    gathered): the same probabilities bitwise, hence the same metrics."""
    two, outs = launch(data_files, tmp_path / "run", 2, more={"train.epochs": 1})
    assert two is not None, [o[2][-3000:] for o in outs]
    # Score the final weights in one process: a 1-process launch of the finished run resumes
    # nothing (the run is finished) and evaluates the same model.
    one, outs1 = launch(data_files, tmp_path / "run", 1, more={"train.epochs": 1})
    assert one is not None, outs1[0][2]
    assert one["metrics"] == two["metrics"]


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2-ranks-then-1", "1-then-2-ranks"])
def test_a_checkpoint_resumes_on_another_number_of_ranks(data_files, tmp_path, first, then):
    straight, outs = launch(data_files, tmp_path / "straight", 1)
    assert straight is not None, outs[0][2]
    stopped, outs = launch(data_files, tmp_path / "resumed", first, stop_step=7)
    assert stopped is not None and stopped.get("interrupted"), [o[2][-3000:] for o in outs]
    resumed, outs = launch(data_files, tmp_path / "resumed", then)
    assert resumed is not None and resumed["result"]["resumed"], [o[2][-3000:] for o in outs]
    assert "rank(s), this run has" in outs[0][2]  # the change of world size is reported
    for step, loss in straight["losses"].items():
        got = stopped["losses"].get(step, resumed["losses"].get(step))
        assert got == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    assert_same_weights(final(tmp_path / "straight")[0], final(tmp_path / "resumed")[0])


def test_a_two_rank_run_killed_and_relaunched_ends_bitwise_equal(data_files, tmp_path):
    """Dropout on (each rank's generator is saved), SIGKILL of both ranks after a step
    checkpoint is on disk, relaunch: the same final bytes as the uninterrupted 2-rank run."""
    more = {"model.dropout": 0.1}
    straight, outs = launch(data_files, tmp_path / "straight", 2, more=more)
    assert straight is not None, [o[2][-3000:] for o in outs]
    _, outs = launch(data_files, tmp_path / "killed", 2, kill_step=8, more=more)
    assert outs[0][0] == -signal.SIGKILL
    resumed, outs = launch(data_files, tmp_path / "killed", 2, more=more)
    assert resumed is not None and resumed["result"]["resumed"], [o[2][-3000:] for o in outs]
    a_model, a_opt, a_name = final(tmp_path / "straight")
    b_model, b_opt, b_name = final(tmp_path / "killed")
    assert a_name == b_name
    for k in a_model:
        assert torch.equal(a_model[k], b_model[k]), k
    for k in a_opt:
        assert torch.equal(a_opt[k], b_opt[k]), k


def test_an_error_on_one_rank_ends_both_naming_it(data_files, tmp_path):
    start = time.monotonic()
    _, outs = launch(data_files, tmp_path / "run", 2, more={"train.auto_microbatch": False},
                     env={"ENSTACK_TEST_FAIL_RANK": "1", "ENSTACK_TEST_FAIL_STEP": "4"}, timeout=120)
    elapsed = time.monotonic() - start
    assert all(rc != 0 for rc, _, _ in outs), [o[2][-2000:] for o in outs]
    assert "out of memory" in outs[1][2]  # rank 1's own error
    assert "rank 1: out of memory" in outs[0][2], outs[0][2][-3000:]  # rank 0 names it
    assert elapsed < 60 + 30  # both launch and tokenization included; the stop itself is immediate


def test_batch_size_that_does_not_divide_among_ranks_is_refused(data_files, tmp_path):
    _, outs = launch(data_files, tmp_path / "run", 2, more={"train.batch_size": 7}, timeout=120)
    assert all(rc != 0 for rc, _, _ in outs)
    assert "must divide among the 2 ranks" in outs[0][2]


def test_torchrun_launches_the_cli(data_files, tmp_path):
    ov = overrides(data_files, tmp_path / "cli", **{"model.dropout": 0.0, "train.epochs": 1})
    sets = [f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in ov.items()]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "enstack", "train", "configs/demo.yaml", *sets],
                          capture_output=True, text=True, cwd=os.getcwd(), timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(sorted((tmp_path / "cli" / "checkpoints").glob("step-*"))[-1].joinpath(
        "trainer_state.json").read_text())["state"]
    assert state["world_size"] == 2 and state["finished"]


def test_inspect_shows_the_world_size_a_checkpoint_was_written_with(data_files, tmp_path):
    from enstack.ckpt import tools

    _, outs = launch(data_files, tmp_path / "run", 2, more={"train.epochs": 1})
    assert all(rc == 0 for rc, _, _ in outs), [o[2][-2000:] for o in outs]
    last = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    report = tools.inspect(last)
    assert report["valid"] and report["state"]["world_size"] == 2
    assert "written by 2 data-parallel rank(s); global batch 8 (4 per rank)" in tools.format_inspect(report)


def test_out_of_memory_before_the_all_reduce_halves_the_micro_batch_on_every_rank(data_files, tmp_path):
    """An out-of-memory at the forward of step 3 on both ranks (before they communicate): each
    runs its share as smaller micro-batches from then on, and the run ends as the one-process
    run with the same injected out-of-memory."""
    env = {"ENSTACK_INJECT_OOM_AT_STEP": "3"}
    one, outs = launch(data_files, tmp_path / "one", 1, env=env)
    assert one is not None, outs[0][2][-3000:]
    two, outs = launch(data_files, tmp_path / "two", 2, env=env)
    assert two is not None and all(rc == 0 for rc, _, _ in outs), [o[2][-3000:] for o in outs]
    assert "micro-batches" in outs[0][2]
    assert_same_weights(final(tmp_path / "one")[0], final(tmp_path / "two")[0])
