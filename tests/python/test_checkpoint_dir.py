"""Crash-consistent checkpoint directories: manifest verification, replacement,
newest-by-manifest selection, pruning, and SIGKILL at random moments while saving."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

import enstack
from enstack._C import ckpt


def _write(root, step, value=None, name=None):
    w = ckpt.CheckpointWriter(str(root / (name or f"step-{step:08d}")))
    w.add_tensors("model.safetensors", {"w": torch.full((64, 64), float(step if value is None else value))})
    w.add_json("trainer_state.json", {"step": step})
    return w.commit(step, "full", {"epoch": 0})


def test_commit_writes_files_and_a_manifest_that_verifies(tmp_path):
    path = _write(tmp_path, 5)
    manifest = ckpt.verify(path)
    assert manifest["step"] == 5 and manifest["kind"] == "full"
    assert sorted(f["name"] for f in manifest["files"]) == ["model.safetensors", "trainer_state.json"]
    assert torch.equal(load_file(os.path.join(path, "model.safetensors"))["w"], torch.full((64, 64), 5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000005"]  # no temporary left behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_damaged_checkpoints_fail_verification(tmp_path, damage):
    path = _write(tmp_path, 1)
    target = os.path.join(path, "model.safetensors")
    if damage == "flip":
        data = bytearray(open(target, "rb").read())
        data[len(data) // 2] ^= 1
        open(target, "wb").write(bytes(data))
    elif damage == "truncate":
        os.truncate(target, 100)
    elif damage == "delete":
        os.remove(target)
    else:
        os.remove(os.path.join(path, "MANIFEST.json"))
    with pytest.raises(enstack.CheckpointError):
        ckpt.verify(path)
    assert ckpt.latest_valid([str(tmp_path)]) is None


def test_an_abandoned_writer_leaves_the_previous_checkpoint_untouched(tmp_path):
    _write(tmp_path, 1, name="last")
    w = ckpt.CheckpointWriter(str(tmp_path / "last"))
    w.add_json("trainer_state.json", {"step": 2})
    del w  # never committed (as if saving failed)
    assert ckpt.verify(str(tmp_path / "last"))["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last"]
    _write(tmp_path, 2, name="last")  # replacing works and leaves one directory
    assert ckpt.verify(str(tmp_path / "last"))["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_newest_is_chosen_by_manifest_step_not_mtime_across_roots(tmp_path):
    local, mirror = tmp_path / "local", tmp_path / "mirror"
    for step in (10, 30):
        _write(local, step)
    _write(mirror, 20)
    newest = _write(mirror, 40)
    os.utime(newest, (1, 1))  # an ancient mtime must not matter
    assert ckpt.latest_valid([str(local), str(mirror)]) == newest
    os.remove(os.path.join(newest, "model.safetensors"))  # damaged: fall back to the next newest
    assert ckpt.latest_valid([str(local), str(mirror)]) == local / "step-00000030"


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _write(tmp_path, step)
    ckpt.prune(str(tmp_path), "step-", 2, [str(tmp_path / "step-00000001")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001", "step-00000004", "step-00000005"]


WRITER = textwrap.dedent("""
    import sys, torch
    from enstack._C import ckpt
    root, start = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    for step in range(start, start + 100000):
        for name in (f"step-{step:08d}", "last"):
            w = ckpt.CheckpointWriter(f"{root}/{name}")
            w.add_tensors("model.safetensors", {"w": torch.full((512, 512), float(step)),
                                                "b": torch.arange(1000) + step})
            w.add_json("trainer_state.json", {"step": step})
            w.commit(step, "full")
        ckpt.prune(root, "step-", 2)
""")


def test_sigkill_while_saving_always_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(7)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "ckpts"
    root.mkdir()
    newest = 0
    for round_ in range(10):
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(newest + 1)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        # Let the writer land at least one new checkpoint, then kill it at a random moment.
        deadline = time.time() + 60
        while time.time() < deadline:
            found = ckpt.list_by_step(str(root))
            if found and found[-1][0] > newest:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = ckpt.latest_valid([str(root)])
        assert latest is not None, f"round {round_}: no valid checkpoint"
        manifest = ckpt.verify(latest)
        tensors = load_file(os.path.join(latest, "model.safetensors"))
        step = manifest["step"]
        assert torch.equal(tensors["w"], torch.full((512, 512), float(step)))
        assert step >= newest
        newest = step
        # Whatever survived with a manifest also verifies: nothing half-written looks complete.
        for _, path in ckpt.list_by_step(str(root)):
            ckpt.verify(path)
    assert newest > 1
