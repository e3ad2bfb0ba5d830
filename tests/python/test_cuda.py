"""The GPU path, marked ``cuda`` and skipped without a CUDA device (the development and CI
machines have none; ``scripts/gpu-check.sh`` runs them where one is lent): resume on CUDA
(bitwise with ``train.deterministic``, within a stated tolerance without), SDPA-with-dropout
training and the CUDA RNG state across a resume, CUDA memory statistics in the log records,
and a real CUDA out-of-memory, both stopped with recovery/ and absorbed by a smaller
micro-batch. fp16 against torch.amp on CUDA is test_trainer.py's first-steps test with
device cuda; the pinned snapshot copies are test_durability.py's snapshot test with device cuda."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import enstack
from enstack._C import ckpt
from test_trainer import (ON_CUDA, RUNNER, config, data_files, overrides,  # noqa: F401 - data_files is a fixture
                          straight_killed_resumed)

pytestmark = ON_CUDA

QUIET = dict(progress=False, tensorboard=False, plots=False)
# fp16 with dropout on: the CUDA step as Colab runs it (SDPA with dropout, the grad scaler).
ON_GPU = {"run.device": "cuda", "train.precision": "fp16"}


def _final(out):
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return last.name, load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors")


def _resume_pair(data_files, tmp_path, **more):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    sets = dict(ON_GPU, **more)
    _, resumed = straight_killed_resumed(script, overrides(data_files, tmp_path / "straight", **sets),
                                         overrides(data_files, tmp_path / "killed", **sets), "log", 7)
    assert "holds no CUDA RNG state" not in resumed.stderr  # the dropout stream came back
    return _final(tmp_path / "straight"), _final(tmp_path / "killed")


def test_a_deterministic_cuda_run_resumes_bitwise(data_files, tmp_path):
    a, b = _resume_pair(data_files, tmp_path, **{"train.deterministic": True})
    assert a[0] == b[0]
    for x, y in ((a[1], b[1]), (a[2], b[2])):
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_a_cuda_run_resumes_within_tolerance_without_deterministic_kernels(data_files, tmp_path):
    # Stated tolerance: atomics in some backward kernels reorder sums, so weights may differ in
    # the last bits and drift a little over the remaining steps.
    a, b = _resume_pair(data_files, tmp_path)
    assert a[0] == b[0]
    for k in a[1]:
        torch.testing.assert_close(b[1][k], a[1][k], rtol=1e-3, atol=1e-4, msg=k)


def test_log_records_carry_cuda_memory_statistics(data_files, tmp_path):
    logs = []
    enstack.Trainer(config(data_files, tmp_path / "run", **ON_GPU, **{"train.epochs": 1})).fit(
        resume=False, callback=lambda r: logs.append(r) if r["event"] == "log" else None, **QUIET)
    assert logs and all(r["cuda_max_allocated_bytes"] > 0 for r in logs)
    assert all(r["cuda_max_reserved_bytes"] >= r["cuda_max_allocated_bytes"] for r in logs)


OOM = textwrap.dedent("""
    import json, sys
    import torch
    import enstack
    cfg = enstack.load_config("configs/demo.yaml", overrides=json.loads(sys.argv[1]))
    trainer = enstack.Trainer(cfg)
    trainer.prepare()
    torch.cuda.set_per_process_memory_fraction(float(sys.argv[2]))  # a small GPU, as the allocator sees it
    try:
        print("TRAINED", trainer.fit(resume=False, progress=False, tensorboard=False, plots=False).global_step)
    except enstack.Error as e:
        print("ERROR", e)
""")


@pytest.mark.parametrize("auto", [False, True], ids=["stop-with-advice", "smaller-microbatch"])
def test_a_real_cuda_out_of_memory(data_files, tmp_path, auto):
    wide = dict(json.loads((data_files / "tiny.json").read_text()), intermediate_size=65536)
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    out = tmp_path / "run"
    sets = overrides(data_files, out, **ON_GPU, **{"model.name_or_path": str(tmp_path / "wide.json"),
                                                   "train.batch_size": 128, "train.grad_accum": 1,
                                                   "model.max_length": 128, "train.auto_microbatch": auto})
    script = tmp_path / "oom.py"
    script.write_text(OOM)
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(0.5, 3 * 2**30 / total)  # ~3 GiB: the weights fit, one full batch does not
    done = subprocess.run([sys.executable, str(script), json.dumps(sets), str(fraction)], capture_output=True,
                          text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    if auto:
        assert "TRAINED" in done.stdout and "micro-batches" in done.stderr, done.stdout + done.stderr[-3000:]
    else:
        assert "ERROR out of memory at optimizer step 1" in done.stdout, done.stdout + done.stderr[-3000:]
        assert ckpt.verify_checkpoint(str(out / "checkpoints" / "recovery"))["step"] == 0
