"""Checkpoints that survive anything: SIGKILL at random moments (during writes,
renames and mirror copies) with SWA on, injected write failures (ENOSPC, EIO,
EACCES), a Drive-style mirror a fresh runtime resumes from, and SWA against
torch.optim.swa_utils.AveragedModel."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import enstack
from enstack._C import _testing, ckpt
from enstack._C.train import SwaAverage
from test_trainer import ON_CUDA, config, data_files, overrides  # noqa: F401 - data_files is a fixture

KILLS = int(os.environ.get("ENSTACK_KILLS", "50"))


def swa_overrides(data_files, out, **more):
    base = {"train.swa.enabled": True, "train.swa.start_epoch": 1, "train.swa.every_steps": 1,
            "train.save_steps": 1, "train.save_total_limit": 2, "train.eval_strategy": "epoch"}
    base.update(more)
    return overrides(data_files, out, **base)


def final_tensors(out: Path):
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    files = {name: load_file(last / name) for name in ("model.safetensors", "optimizer.safetensors", "swa.safetensors")
             if (last / name).exists()}
    return last.name, files


def assert_bitwise_equal(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        assert a[1][name].keys() == b[1][name].keys(), name
        for k in a[1][name]:
            assert torch.equal(a[1][name][k], b[1][name][k]), f"{name}:{k}"


# -- SWA ------------------------------------------------------------------------------------------

def test_swa_average_equals_torch_averaged_model():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    reference = torch.optim.swa_utils.AveragedModel(module)
    ours = SwaAverage(list(module.named_parameters()))
    for _ in range(25):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        reference.update_parameters(module)
        ours.update()
    assert ours.count == 25
    averaged = dict(reference.module.named_parameters())
    for name, value in ours.state_tensors().items():
        torch.testing.assert_close(value, averaged[name], rtol=1e-7, atol=1e-7, msg=name)
    live = {n: p.clone() for n, p in module.named_parameters()}
    ours.swap_with_parameters()
    for name, p in module.named_parameters():
        assert torch.equal(p, ours.state_tensors()[name].new_tensor(averaged[name])) or torch.allclose(
            p, averaged[name], rtol=1e-7, atol=1e-7)
    ours.swap_with_parameters()
    for name, p in module.named_parameters():
        assert torch.equal(p, live[name])


def test_swa_of_a_run_equals_averaged_model_fed_its_checkpoints(data_files, tmp_path):
    out = tmp_path / "run"
    cfg = enstack.load_config("configs/demo.yaml", overrides=swa_overrides(
        data_files, out, **{"train.save_total_limit": 1000, "train.save_coalesce": False}))
    result = enstack.Trainer(cfg).fit(resume=False, progress=False, tensorboard=False, plots=False)
    steps = sorted((out / "checkpoints").glob("step-*"))
    assert len(steps) == result.global_step and result.swa_dir
    template = enstack.model.load(steps[0])
    module = torch.nn.Module()
    names = [n for n, _ in template.named_parameters()]
    params = {n: torch.nn.Parameter(p.detach().clone()) for n, p in template.named_parameters()}
    for i, n in enumerate(names):
        module.register_parameter(f"p{i}", params[n])
    reference = torch.optim.swa_utils.AveragedModel(module)
    for step in steps:  # the weights after every optimizer step, as the run averaged them
        weights = load_file(step / "model.safetensors")
        with torch.no_grad():
            for n in names:
                params[n].copy_(weights[n])
        reference.update_parameters(module)
    averaged = dict(reference.module.named_parameters())
    swa = load_file(Path(result.swa_dir) / "model.safetensors")
    for i, n in enumerate(names):
        torch.testing.assert_close(swa[n], averaged[f"p{i}"].detach(), rtol=1e-7, atol=1e-7, msg=n)
    assert result.swa_eval is not None and 0.0 <= result.swa_eval["accuracy"] <= 1.0
    assert json.loads((out / "checkpoints" / "swa" / "MANIFEST.json").read_text())["extra"]["swa_count"] == len(steps)


# -- injected write failures ----------------------------------------------------------------------

@pytest.mark.parametrize("error", ["ENOSPC", "EIO", "EACCES"])
def test_a_failing_save_is_reported_and_training_completes(data_files, tmp_path, error):
    out = tmp_path / "run"
    records = []
    cfg = config(data_files, out)
    _testing.inject_write_fault(f"{error}:step-00000010:1:1")  # the first file of the step-10 save, mid-write
    try:
        result = enstack.Trainer(cfg).fit(resume=False, progress=False, tensorboard=False, plots=False,
                                          callback=records.append)
    finally:
        _testing.clear_write_faults()
    failures = [r for r in records if r["event"] == "save_error"]
    assert len(failures) == 1 and "step-00000010" in failures[0]["path"]
    assert os.strerror(getattr(__import__("errno"), error)) in failures[0]["error"]
    assert result.save_errors == 1
    assert not (out / "checkpoints" / "step-00000010").exists()
    assert ckpt.verify(result.last_checkpoint)["step"] == result.global_step == 18
    for _, path in ckpt.list_by_step(out / "checkpoints", "step-"):
        ckpt.verify(path)
    assert enstack.Trainer(cfg).fit(resume=True, progress=False, tensorboard=False, plots=False).global_step == 18


def test_an_unwritable_mirror_never_stops_training(data_files, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the mirror folder should be, like a Drive mount that went away")
    records = []
    cfg = config(data_files, tmp_path / "run", **{"run.mirror_dir": str(blocker / "run")})
    result = enstack.Trainer(cfg).fit(resume=False, progress=False, tensorboard=False, plots=False,
                                      callback=records.append)
    assert result.global_step == 18
    assert any(r["event"] == "mirror_error" for r in records)
    assert not any(r["event"] == "save_error" for r in records)


# -- mirror ---------------------------------------------------------------------------------------

def test_a_fresh_runtime_resumes_from_the_mirror_exactly(data_files, tmp_path):
    straight = tmp_path / "straight"
    enstack.Trainer(enstack.load_config("configs/demo.yaml", overrides=swa_overrides(data_files, straight))).fit(
        resume=False, progress=False, tensorboard=False, plots=False)

    local, drive = tmp_path / "local", tmp_path / "drive"
    cfg = enstack.load_config("configs/demo.yaml",
                              overrides=swa_overrides(data_files, local, **{"run.mirror_dir": str(drive)}))
    with pytest.raises(KeyboardInterrupt):
        enstack.Trainer(cfg).fit(resume=False, progress=False, tensorboard=False, plots=False,
                                 callback=lambda r: not (r["event"] == "log" and r["step"] == 13))
    mirrored = ckpt.latest_valid([drive / "checkpoints"], "recovery")
    assert mirrored is not None and ckpt.verify(mirrored)["step"] == 13
    assert len(ckpt.list_by_step(drive / "checkpoints", "step-")) <= 2  # retention applies to the mirror too
    shutil.rmtree(local / "checkpoints")  # a new Colab runtime: only Drive survived
    begin = []
    cfg = enstack.load_config("configs/demo.yaml",
                              overrides=swa_overrides(data_files, local, **{"run.mirror_dir": str(drive)}))
    enstack.Trainer(cfg).fit(resume=True, progress=False, tensorboard=False, plots=False,
                             callback=lambda r: begin.append(r) if r["event"] == "begin" else None)
    assert begin[0]["resumed"] and begin[0]["step"] == 13
    assert_bitwise_equal(final_tensors(straight), final_tensors(local))
    assert ckpt.verify(drive / "checkpoints" / final_tensors(local)[0])["step"] == 18


# -- SIGKILL at random moments --------------------------------------------------------------------

RUNNER = textwrap.dedent("""
    import json, sys
    import enstack
    def on_record(r):
        if r["event"] == "begin":
            print("begin", flush=True)
    cfg = enstack.load_config("configs/demo.yaml", overrides=json.loads(sys.argv[1]))
    enstack.Trainer(cfg).fit(resume=True, callback=on_record, progress=False, tensorboard=False, plots=False)
    print("done", flush=True)
""")


def run_until_done(script, overrides_, rng, kills_left, max_delay):
    """Starts the run, SIGKILLs it at a random moment after it began, and restarts it,
    until it finishes; returns the number of kills."""
    kills = 0
    while True:
        proc = subprocess.Popen([sys.executable, str(script), json.dumps(overrides_)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() == "begin" and kills < kills_left:
            time.sleep(rng.uniform(0.0, max_delay))
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            continue
        assert proc.returncode == 0, err
        return kills


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes_and_ends_bitwise_equal(data_files, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    reference = tmp_path / "reference"
    enstack.Trainer(enstack.load_config("configs/demo.yaml", overrides=swa_overrides(data_files, reference))).fit(
        resume=False, progress=False, tensorboard=False, plots=False)
    expected = final_tensors(reference)
    rng = random.Random(1234)
    kills, rounds = 0, 0
    while kills < KILLS:
        out = tmp_path / f"round-{rounds}"
        more = {"run.mirror_dir": str(tmp_path / f"drive-{rounds}")}
        kills += run_until_done(script, swa_overrides(data_files, out, **more), rng, KILLS - kills, 1.5)
        assert_bitwise_equal(expected, final_tensors(out))
        for _, path in ckpt.list_by_step(out / "checkpoints", "step-"):
            ckpt.verify(path)
        rounds += 1
    assert kills >= KILLS


# -- out of memory --------------------------------------------------------------------------------

def test_out_of_memory_writes_recovery_with_advice_and_resumes_exactly(data_files, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    enstack.Trainer(config(data_files, straight)).fit(resume=False, progress=False, tensorboard=False, plots=False)
    out = tmp_path / "run"
    monkeypatch.setenv("ENSTACK_INJECT_OOM_AT_STEP", "7")
    with pytest.raises(enstack.Error) as raised:  # train.auto_microbatch false: stop with advice
        enstack.Trainer(config(data_files, out, **{"train.auto_microbatch": False})).fit(
            resume=False, progress=False, tensorboard=False, plots=False)
    message = str(raised.value)
    assert "out of memory at optimizer step 7" in message
    for advice in ("train.batch_size", "train.grad_accum", "model.max_length", "fp16", "recovery"):
        assert advice in message, advice
    assert ckpt.verify(out / "checkpoints" / "recovery")["step"] == 6
    monkeypatch.delenv("ENSTACK_INJECT_OOM_AT_STEP")
    begin = []
    enstack.Trainer(config(data_files, out)).fit(resume=True, progress=False, tensorboard=False, plots=False,
                                                 callback=lambda r: begin.append(r) if r["event"] == "begin" else None)
    assert begin[0]["step"] == 6
    expected, resumed = final_tensors(straight), final_tensors(out)
    assert expected[0] == resumed[0]
    for name, tensor in expected[1]["model.safetensors"].items():
        assert torch.equal(tensor, resumed[1]["model.safetensors"][name]), name


def test_out_of_memory_halves_the_microbatch_and_ends_as_the_uninterrupted_run(data_files, tmp_path, monkeypatch):
    # Dropout 0: splitting a batch changes how many dropout draws a step makes, not its update.
    no_dropout = {"model.dropout": 0.0}
    straight = tmp_path / "straight"
    enstack.Trainer(config(data_files, straight, **no_dropout)).fit(resume=False, progress=False, tensorboard=False,
                                                                      plots=False)
    out = tmp_path / "run"
    monkeypatch.setenv("ENSTACK_INJECT_OOM_AT_STEP", "7")
    records = []
    result = enstack.Trainer(config(data_files, out, **no_dropout)).fit(
        resume=False, progress=False, tensorboard=False, plots=False, callback=records.append)
    monkeypatch.delenv("ENSTACK_INJECT_OOM_AT_STEP")
    assert result.global_step == 18 and not (out / "checkpoints" / "recovery").exists()
    shrunk = [r for r in records if r["event"] == "microbatch"]
    assert [(r["step"], r["microbatch_splits"], r["microbatch_size"]) for r in shrunk] == [(7, 2, 4)]  # batch 8
    expected, got = final_tensors(straight), final_tensors(out)
    assert expected[0] == got[0]
    for kind in ("model.safetensors", "optimizer.safetensors"):
        for name, tensor in expected[1][kind].items():
            torch.testing.assert_close(got[1][kind][name], tensor, rtol=1e-5, atol=1e-6, msg=f"{kind}:{name}")
    # The smaller micro-batch is part of the checkpoint: a resume after the shrink keeps it.
    before_last, last = sorted((out / "checkpoints").glob("step-*"))[-2:]
    state = json.loads((before_last / "trainer_state.json").read_text())
    assert state["state"]["global_step"] > 7 and state["state"]["microbatch_splits"] == 2
    shutil.rmtree(last)
    begin = []
    enstack.Trainer(config(data_files, out, **no_dropout)).fit(
        resume=True, progress=False, tensorboard=False, plots=False,
        callback=lambda r: begin.append(r) if r["event"] == "begin" else None)
    assert begin[0]["microbatch_splits"] == 2
    again = final_tensors(out)
    for name, tensor in got[1]["model.safetensors"].items():
        assert torch.equal(tensor, again[1]["model.safetensors"][name]), name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_CUDA)])
def test_a_checkpoint_holds_the_weights_of_its_step_although_training_went_on(data_files, tmp_path, device):
    # A save's copy (into pinned host buffers from a GPU, asynchronously) overlaps the next
    # micro-batches; what lands on disk must be the weights right after the save step.
    seen = {}

    def on_record(r):
        if r["event"] == "log" and r["step"] == 5:
            seen["weights"] = {k: v.detach().cpu().clone() for k, v in trainer.model.named_parameters()}

    trainer = enstack.Trainer(config(data_files, tmp_path / "run", **{"run.device": device, "train.save_steps": 5,
                                                                      "train.save_total_limit": 10}))
    trainer.fit(resume=False, progress=False, tensorboard=False, plots=False, callback=on_record)
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-00000005" / "model.safetensors")
    assert seen["weights"] and set(seen["weights"]) <= set(saved)
    for k, v in seen["weights"].items():
        assert torch.equal(saved[k], v), k


def test_starting_over_sets_the_previous_checkpoints_aside(data_files, tmp_path):
    out = tmp_path / "run"
    enstack.Trainer(config(data_files, out)).fit(resume=False, progress=False, tensorboard=False, plots=False)
    with pytest.raises(KeyboardInterrupt):  # start over, stop at step 4
        enstack.Trainer(config(data_files, out)).fit(resume=False, progress=False, tensorboard=False, plots=False,
                                                     callback=lambda r: not (r["event"] == "log" and r["step"] == 4))
    aside = list(tmp_path.glob("run/checkpoints.previous-*"))
    assert len(aside) == 1 and (aside[0] / "step-00000018" / "MANIFEST.json").is_file()  # kept, not deleted
    begin = []
    enstack.Trainer(config(data_files, out)).fit(resume=True, progress=False, tensorboard=False, plots=False,
                                                 callback=lambda r: begin.append(r) if r["event"] == "begin" else None)
    assert begin[0]["step"] == 4  # the new run's recovery, not the old run's step 18
