"""Reliability under misuse and faults: the compiled module cannot interpose on torch
(a real CPU out-of-memory raises and writes recovery/), one process per run directory
(the lock) and one runtime per mirror (the lease), SIGTERM stops like Ctrl-C, and a
run with checkpoints that are all invalid is refused rather than silently restarted."""

from __future__ import annotations

import json
import os
import re
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
from test_trainer import config, data_files, overrides  # noqa: F401 - data_files is a fixture

QUIET = dict(progress=False, tensorboard=False, plots=False)


def _module_path() -> Path:
    return Path(enstack._C.__file__)


# -- the compiled module keeps its symbols to itself ------------------------------------------------

def test_importing_enstack_leaves_torchs_out_of_memory_error_a_runtime_error():
    code = ("import torch, enstack\n"
            "try:\n    torch.empty(10**12)\nexcept RuntimeError as e:\n    print('raised', type(e).__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "raised" in done.stdout


def test_the_module_exports_only_its_init_and_needs_no_third_party_shared_library():
    so = _module_path()
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True)
    exported = {line.split()[-1] for line in symbols.stdout.splitlines() if line.strip()}
    assert exported == {"PyInit__C"}, sorted(exported)[:20]
    dynamic = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+?)\]", dynamic)
    allowed = re.compile(r"^(libtorch.*|libc10.*|libgomp.*|libstdc\+\+|libgcc_s|libc|libm|libpthread|libdl|librt|"
                         r"ld-linux.*)\.so")
    assert needed and all(allowed.match(n) for n in needed), needed


LIMITED = textwrap.dedent("""
    import json, resource, sys
    import enstack
    cfg = enstack.load_config("configs/demo.yaml", overrides=json.loads(sys.argv[1]))
    trainer = enstack.Trainer(cfg)
    trainer.prepare()  # data, tokenizer and model are ready: what follows is training
    # The address space this process has now, plus less than one training step needs.
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + 768 * 2**20, resource.RLIM_INFINITY))
    try:
        result = trainer.fit(resume=False, progress=False, tensorboard=False, plots=False)
        print("TRAINED", result.global_step)
    except enstack.Error as e:
        print("ERROR", e)
""")


def _run_under_a_memory_limit(data_files, tmp_path, auto_microbatch: bool):
    # A wide feed-forward layer (8,192) and batches of 128 x 128 tokens: one step needs far
    # more than the limit leaves, a quarter of a batch does not.
    wide = dict(json.loads((data_files / "tiny.json").read_text()), intermediate_size=8192)
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    out = tmp_path / "run"
    sets = overrides(data_files, out, **{"model.name_or_path": str(tmp_path / "wide.json"), "train.batch_size": 128,
                                         "train.grad_accum": 1, "model.max_length": 128,
                                         "train.auto_microbatch": auto_microbatch})
    script = tmp_path / "limited.py"
    script.write_text(LIMITED)
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(script), json.dumps(sets)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_a_real_cpu_out_of_memory_writes_recovery_and_raises_the_advice(data_files, tmp_path):
    out, done = _run_under_a_memory_limit(data_files, tmp_path, auto_microbatch=False)
    assert "ERROR out of memory at optimizer step 1" in done.stdout, done.stdout + done.stderr[-3000:]
    assert "train.batch_size" in done.stdout and "can't allocate memory" in done.stdout
    assert ckpt.verify_checkpoint(str(out / "checkpoints" / "recovery"))["step"] == 0


def test_a_real_cpu_out_of_memory_shrinks_the_microbatch_and_training_completes(data_files, tmp_path):
    out, done = _run_under_a_memory_limit(data_files, tmp_path, auto_microbatch=True)
    assert "TRAINED 4" in done.stdout, done.stdout + done.stderr[-3000:]  # 2 epochs of 2 batches
    assert "now runs as 2 micro-batches" in done.stderr, done.stderr[-3000:]
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert json.loads((last / "trainer_state.json").read_text())["state"]["microbatch_splits"] >= 2


# -- one process per run directory, one runtime per mirror -----------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    import enstack
    with enstack._C.util.RunLock(sys.argv[1], "training"):
        print("locked", flush=True)
        sys.stdin.read()  # held until the test closes stdin or kills this process
""")


@pytest.fixture
def holder(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    procs = []

    def start(run_dir: Path):
        proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "locked"  # the event: the lock is held
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate()


def test_a_second_process_cannot_train_into_a_locked_run_directory(data_files, tmp_path, holder):
    out = tmp_path / "run"
    proc = holder(out)
    with pytest.raises(enstack.CheckpointError, match=rf"in use by pid {proc.pid} on host .*training"):
        enstack.Trainer(config(data_files, out)).fit(resume=True, **QUIET)
    assert not (out / "checkpoints").exists() and not (out / "data").exists()  # refused before writing anything
    cli = subprocess.run([sys.executable, "-m", "enstack", "data", "prepare", "configs/demo.yaml", "--set",
                          f"run.output_dir={out}"], capture_output=True, text=True)
    assert cli.returncode == 2 and f"pid {proc.pid}" in cli.stderr, cli.stderr
    proc.kill()  # a SIGKILLed holder leaves no stale lock
    proc.wait()
    assert enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=True, **QUIET).global_step == 9


def _foreign_lease(mirror: Path, age: float) -> None:
    mirror.mkdir(parents=True, exist_ok=True)
    (mirror / ".lease.json").write_text(json.dumps({
        "owner": {"host": "other-runtime", "pid": 4242, "started": 0, "purpose": "training"},
        "token": "someone-else", "heartbeat": time.time() - age}))


def test_a_mirror_leased_by_a_live_runtime_is_refused_unless_taken_over(data_files, tmp_path):
    mirror = tmp_path / "drive" / "run"
    _foreign_lease(mirror, age=5)
    cfg = config(data_files, tmp_path / "run", **{"run.mirror_dir": str(mirror), "train.epochs": 1})
    with pytest.raises(enstack.CheckpointError, match="other-runtime.*take-over-mirror"):
        enstack.Trainer(cfg).fit(resume=True, **QUIET)
    assert json.loads((mirror / ".lease.json").read_text())["token"] == "someone-else"
    result = enstack.Trainer(cfg).fit(resume=True, take_over_mirror=True, **QUIET)
    assert ckpt.verify_checkpoint(str(mirror / "checkpoints" / Path(result.last_checkpoint).name))
    assert not (mirror / ".lease.json").exists()  # given up at the end


def test_a_stale_mirror_lease_is_taken_over(data_files, tmp_path):
    mirror = tmp_path / "drive" / "run"
    _foreign_lease(mirror, age=3600)
    cfg = config(data_files, tmp_path / "run", **{"run.mirror_dir": str(mirror), "train.epochs": 1,
                                                 "run.mirror_lease_seconds": 60})
    result = enstack.Trainer(cfg).fit(resume=True, **QUIET)
    assert (mirror / "checkpoints" / Path(result.last_checkpoint).name / "MANIFEST.json").is_file()


# -- SIGTERM --------------------------------------------------------------------------------------

TERMED = textwrap.dedent("""
    import json, os, signal, sys
    import enstack
    overrides, term_step = json.loads(sys.argv[1]), int(sys.argv[2])
    saved = []
    def on_record(r):
        if r["event"] == "save":
            saved.append(r["step"])
        # SIGTERM once a checkpoint is on disk and the run is past it: the event, not a timer.
        if term_step >= 0 and r["event"] == "log" and r["step"] >= term_step and saved:
            os.kill(os.getpid(), signal.SIGTERM)
    cfg = enstack.load_config("configs/demo.yaml", overrides=overrides)
    try:
        enstack.Trainer(cfg).fit(resume=True, callback=on_record, progress=False, tensorboard=False, plots=False)
    except enstack.Terminated as e:
        print("TERMINATED", e)
""")


def _last_state(out: Path):
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return last.name, load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors")


def test_sigterm_writes_recovery_and_the_resumed_run_is_bitwise_equal(data_files, tmp_path):
    script = tmp_path / "termed.py"
    script.write_text(TERMED)
    run = lambda out, step: subprocess.run([sys.executable, str(script), json.dumps(overrides(data_files, out)),  # noqa: E731
                                            str(step)], capture_output=True, text=True)
    straight = run(tmp_path / "straight", -1)
    assert straight.returncode == 0, straight.stderr
    termed = run(tmp_path / "termed", 7)
    assert termed.returncode == 0 and "TERMINATED training stopped by SIGTERM at step" in termed.stdout, termed.stderr
    assert ckpt.verify_checkpoint(str(tmp_path / "termed" / "checkpoints" / "recovery"))["step"] >= 7
    resumed = run(tmp_path / "termed", -1)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    a, b = _last_state(tmp_path / "straight"), _last_state(tmp_path / "termed")
    assert a[0] == b[0]
    for x, y in ((a[1], b[1]), (a[2], b[2])):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_sigterm_to_the_cli_exits_143_with_recovery(data_files, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "enstack", "train", "configs/demo.yaml"]
    for k, v in overrides(data_files, out, **{"train.epochs": 50}).items():
        args += ["--set", f"{k}={json.dumps(v)}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the event: the first checkpoint is reported written
        if re.search(r"step-0+5", line) or list((out / "checkpoints").glob("step-*")):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "fit(resume=True) continues" in err
    assert ckpt.verify_checkpoint(str(out / "checkpoints" / "recovery"))["kind"] == "full"


# -- no silent restarts, summaries that say what is on disk ----------------------------------------

def test_checkpoints_that_are_all_invalid_are_refused_not_restarted(data_files, tmp_path):
    out = tmp_path / "run"
    enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=False, **QUIET)
    steps = sorted((out / "checkpoints").glob("step-*"))
    (steps[-1] / "MANIFEST.json").write_text("{ torn")
    for step in steps[:-1]:
        with open(step / "model.safetensors", "r+b") as f:
            f.seek(100)
            f.write(b"\xff\xff")
    with pytest.raises(enstack.CheckpointError) as raised:
        enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=True, **QUIET)
    message = str(raised.value)
    assert "none of them is valid" in message and "--no-resume" in message
    for step in steps:
        assert str(step) in message
    assert sorted((out / "checkpoints").glob("step-*")) == steps  # nothing was changed
    result = enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=False, **QUIET)
    assert result.global_step == 9 and not result.resumed


def test_verify_rejects_what_resume_would_reject(data_files, tmp_path):
    out = tmp_path / "run"
    result = enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=False, **QUIET)
    good = Path(result.last_checkpoint)
    no_optimizer = tmp_path / "no-optimizer"
    shutil.copytree(good, no_optimizer)
    manifest = json.loads((no_optimizer / "MANIFEST.json").read_text())
    manifest["files"] = [f for f in manifest["files"] if f["name"] != "optimizer.safetensors"]
    (no_optimizer / "MANIFEST.json").write_text(json.dumps(manifest))
    ckpt.verify(str(no_optimizer))  # the files it lists are intact ...
    with pytest.raises(enstack.CheckpointError, match="optimizer.safetensors"):
        ckpt.verify_checkpoint(str(no_optimizer))  # ... but a full checkpoint needs the optimizer
    wrong_type = tmp_path / "wrong-type"
    shutil.copytree(good, wrong_type)
    state = json.loads((wrong_type / "trainer_state.json").read_text())
    state["state"]["global_step"] = "nine"
    (wrong_type / "trainer_state.json").write_text(json.dumps(state))
    manifest = json.loads((wrong_type / "MANIFEST.json").read_text())
    for f in manifest["files"]:
        if f["name"] == "trainer_state.json":
            f["size"] = (wrong_type / "trainer_state.json").stat().st_size
            f["fnv1a64"] = ckpt.file_checksum(str(wrong_type / "trainer_state.json"))
    (wrong_type / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(enstack.CheckpointError, match="trainer_state"):
        ckpt.verify_checkpoint(str(wrong_type))
    cli = subprocess.run([sys.executable, "-m", "enstack", "ckpt", "verify", str(wrong_type)],
                         capture_output=True, text=True)
    assert cli.returncode != 0, cli.stdout


def test_when_every_save_fails_the_result_says_nothing_was_saved(data_files, tmp_path):
    from enstack.cli import _saved_summary

    out = tmp_path / "run"
    _testing.inject_write_fault("ENOSPC:/checkpoints/:0:-1")  # every checkpoint file, as on a full disk
    try:
        result = enstack.Trainer(config(data_files, out, **{"train.epochs": 1})).fit(resume=False, **QUIET)
    finally:
        _testing.clear_write_faults()
    assert result.save_errors > 0 and "No space left on device" in result.last_save_error
    assert result.last_checkpoint == "" and result.best_dir == "" and result.best_saved_step == -1
    summary = _saved_summary(result)
    assert "no checkpoint saved" in summary and "best model: none saved" in summary


def test_a_second_fit_of_a_finished_run_reports_its_checkpoints(data_files, tmp_path):
    cfg = config(data_files, tmp_path / "run", **{"train.epochs": 1})
    trainer = enstack.Trainer(cfg)
    first = trainer.fit(resume=False, **QUIET)
    again = trainer.fit(resume=True, **QUIET)
    assert again.last_checkpoint == first.last_checkpoint != ""
    assert again.best_dir == first.best_dir and again.best_saved_step == first.best_saved_step >= 0


# -- wall-time saves ----------------------------------------------------------------------------

CLOCKED = textwrap.dedent("""
    import json, os, signal, sys
    import enstack
    from enstack._C import _testing
    overrides, kill_after = json.loads(sys.argv[1]), int(sys.argv[2])
    saved = []
    def on_record(r):
        if r["event"] == "log":
            _testing.advance_clock(40.0)  # each step "takes" 40 s: with save_minutes 1, a save every 2 steps
        if r["event"] == "save" and "step-" in r["path"]:
            saved.append(r["step"])
            if 0 <= kill_after <= r["step"]:
                os.kill(os.getpid(), signal.SIGKILL)
    cfg = enstack.load_config("configs/demo.yaml", overrides=overrides)
    enstack.Trainer(cfg).fit(resume=True, callback=on_record, progress=False, tensorboard=False, plots=False)
    print(json.dumps(saved))
""")


def test_save_minutes_saves_by_wall_time_and_resume_stays_exact(data_files, tmp_path):
    script = tmp_path / "clocked.py"
    script.write_text(CLOCKED)
    # save_coalesce off: every save point is written (a coalesced one would replace a queued save).
    epoch_only = {"train.save_steps": None, "train.eval_strategy": "epoch", "train.eval_steps": None}
    timed = dict(epoch_only, **{"train.save_minutes": 1, "train.save_coalesce": False})
    run = lambda out, kill, **more: subprocess.run(  # noqa: E731
        [sys.executable, str(script), json.dumps(overrides(data_files, out, **more)), str(kill)],
        capture_output=True, text=True)
    straight = run(tmp_path / "straight", -1, **epoch_only)
    assert straight.returncode == 0, straight.stderr
    assert json.loads(straight.stdout) == [9, 18]  # epoch ends only
    timed_run = run(tmp_path / "timed", -1, **timed)
    assert timed_run.returncode == 0, timed_run.stderr
    assert json.loads(timed_run.stdout) == [2, 4, 6, 8, 9, 11, 13, 15, 17, 18]
    killed = run(tmp_path / "killed", 4, **timed)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run(tmp_path / "killed", -1, **timed)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    for other in ("timed", "killed"):
        a, b = _last_state(tmp_path / "straight"), _last_state(tmp_path / other)
        assert a[0] == b[0]
        for x, y in ((a[1], b[1]), (a[2], b[2])):
            assert all(torch.equal(x[k], y[k]) for k in x), other


def test_deterministic_applies_for_the_fit_only_and_changes_no_cpu_result(data_files, tmp_path):
    plain = enstack.Trainer(config(data_files, tmp_path / "plain", **{"train.epochs": 1})).fit(resume=False, **QUIET)
    seen = []
    strict = enstack.Trainer(config(data_files, tmp_path / "strict", **{"train.epochs": 1,
                                                                        "train.deterministic": True}))
    strict.fit(resume=False, callback=lambda r: seen.append(torch.are_deterministic_algorithms_enabled()), **QUIET)
    assert seen and all(seen) and os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the fit
    a, b = _last_state(tmp_path / "plain"), _last_state(tmp_path / "strict")
    assert a[0] == b[0] == Path(plain.last_checkpoint).name
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])  # CPU kernels are deterministic already


def test_metric_for_best_null_means_no_best_model_tracking(data_files, tmp_path):
    evals = []
    cfg = config(data_files, tmp_path / "run", **{"train.epochs": 1, "train.metric_for_best": None})
    result = enstack.Trainer(cfg).fit(resume=False, callback=lambda r: evals.append(r) if r["event"] == "eval" else None,
                                      **QUIET)
    assert evals and not any(r["best"] for r in evals)  # evaluated, never tracked
    assert not (tmp_path / "run" / "checkpoints" / "best").exists()
    assert result.best_dir == "" and result.best_eval is None and result.last_eval is not None
