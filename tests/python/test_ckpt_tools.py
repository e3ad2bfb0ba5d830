"""`enstack ckpt` tools and checkpoint import: corruption (verify reports it, inspect never
crashes, resume falls back), import of checkpoints written here by the transformers Trainer
and in the earlier pipeline's layout, export loaded by transformers, list of a run."""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import enstack
from enstack import cli
from enstack.ckpt import importer as ckpt_import
from enstack.ckpt import tools as ckpt_tools
from enstack._C import ckpt
from test_trainer import data_files  # noqa: F401 - data_files is a fixture
from test_trainer import config as trainer_config

STEPS = [5, 9, 10, 15, 18]  # 130 examples, batch 8 x accumulation 2: 9 steps per epoch; every 5 and each epoch end


def config(data_files, out, **more):
    """The trainer tests' tiny run, keeping every checkpoint it writes."""
    return trainer_config(data_files, out, **{"train.save_total_limit": 10, **more})


@pytest.fixture(scope="module")
def finished_run(data_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt-run") / "run"
    enstack.Trainer(config(data_files, out)).fit(resume=False, progress=False)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def fit_begin(data_files, out, stop=False):
    """Resumes the run in `out`; returns its begin record and result (None when `stop`ped after one step)."""
    records = []

    def on_record(record):
        records.append(record)
        return not stop

    try:
        result = enstack.Trainer(config(data_files, out)).fit(resume=True, progress=False, callback=on_record)
    except KeyboardInterrupt:
        assert stop
        result = None
    return next(r for r in records if r["event"] == "begin"), result


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def flip_bit(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


# -- the strict safetensors reader -------------------------------------------------------------------
def test_reader_agrees_with_the_safetensors_package(finished_run):
    for name in ("model.safetensors", "optimizer.safetensors"):
        ours, theirs = ckpt_tools.read_safetensors(step_dir(finished_run, 18) / name), load_file(
            step_dir(finished_run, 18) / name)
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]), k


# -- corruption ------------------------------------------------------------------------------------
DAMAGE = {
    "truncate-model": (lambda d: os.truncate(d / "model.safetensors", 1000), "truncated"),
    "delete-optimizer": (lambda d: os.remove(d / "optimizer.safetensors"), "lacks optimizer.safetensors"),
    "flip-model-data": (lambda d: flip_bit(d / "model.safetensors", (d / "model.safetensors").stat().st_size // 2),
                        "checksum"),
    "flip-trainer-state": (lambda d: flip_bit(d / "trainer_state.json", 40), "checksum"),
    "delete-manifest": (lambda d: os.remove(d / "MANIFEST.json"), "MANIFEST.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_fails_verify_inspects_and_resume_falls_back(finished_run, data_files, tmp_path, capsys,
                                                                       damage):
    run = copy_run(finished_run, tmp_path)
    newest = step_dir(run, 18)
    assert cli.main(["ckpt", "verify", str(newest)]) == 0
    apply, reason = DAMAGE[damage]
    apply(newest)
    capsys.readouterr()
    assert cli.main(["ckpt", "verify", str(newest)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and reason in err, err
    report = ckpt_tools.inspect(newest)
    assert report["valid"] is False and report["problems"]
    assert cli.main(["ckpt", "inspect", str(newest)]) == 1
    assert "INVALID" in capsys.readouterr().out
    # The damaged final checkpoint is passed over: training resumes from step 15 and finishes again.
    begin, result = fit_begin(data_files, run)
    assert begin["resumed"] is True and begin["step"] == 15
    assert result.global_step == 18
    assert ckpt_tools.verify(newest)["ok"]


def _mutations(ckpt: Path):
    """(description, function that damages a fresh copy of the checkpoint) pairs."""
    rng = random.Random(7)
    files = sorted(p.name for p in ckpt.iterdir())
    out = []
    for name in files:
        size = (ckpt / name).stat().st_size
        for cut in sorted({0, 1, 7, 8, 9, size // 2, size - 1}):
            out.append((f"truncate {name} to {cut}", lambda d, n=name, c=cut: os.truncate(d / n, c)))
        for _ in range(12):
            at = rng.randrange(min(size, 400)) if rng.random() < 0.7 else rng.randrange(size)
            out.append((f"flip {name}@{at}", lambda d, n=name, a=at: flip_bit(d / n, a)))
        out.append((f"delete {name}", lambda d, n=name: os.remove(d / n)))
    junk = {"not json": "{", "a list": "[]", "files not a list": '{"format": "enstack-checkpoint", "files": 3}',
            "odd entries": '{"format": "enstack-checkpoint", "version": 1, "step": "x", "kind": 5, '
                           '"files": [7, {"name": 5}, {"name": "model.safetensors", "size": "big"}]}',
            "deep": "[" * 100000}
    for what, text in junk.items():
        out.append((f"manifest: {what}", lambda d, t=text: (d / "MANIFEST.json").write_text(t)))
    states = {"state a list": {"state": [], "options": []},
              "wrong types": {"state": {"epoch": "x", "batch_cursor": None, "global_step": [1]},
                              "options": {"total_steps": 18, "epochs": 0, "grad_accum": "2", "batch_size": -1}},
              "zero steps": {"state": {"epoch": 0, "batch_cursor": 4}, "options": {"total_steps": 1, "epochs": 2}}}
    for what, doc in states.items():
        out.append((f"trainer_state: {what}", lambda d, j=doc: (d / "trainer_state.json").write_text(json.dumps(j))))
    out.append(("a safetensors header of bad entries", lambda d: _write_header(
        d / "model.safetensors", {"w": {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}, "v": [1]})))
    out.append(("overlapping tensors", lambda d: _write_header(
        d / "optimizer.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12)))
    return out


def _write_header(path: Path, header, data_len: int = 24) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(data_len))


def test_inspect_and_verify_never_crash_on_damaged_input(finished_run, tmp_path):
    source = step_dir(finished_run, 15)
    mutations = _mutations(source)
    assert len(mutations) > 100
    caught = 0
    for i, (what, mutate) in enumerate(mutations):
        target = tmp_path / f"m{i}"
        shutil.copytree(source, target)
        mutate(target)
        report, result = ckpt_tools.inspect(target), ckpt_tools.verify(target)
        text = ckpt_tools.format_inspect(report)
        try:  # the C++ manifest check is the reference; a flip that leaves a valid manifest may pass it
            ckpt.verify(str(target))
        except enstack.CheckpointError:
            assert report["valid"] is False and report["problems"] and "INVALID" in text, what
            assert result["ok"] is False and result["problems"], what
            caught += 1
        shutil.rmtree(target)
    assert caught >= len(mutations) - 10
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "missing", tmp_path / "a-file", tmp_path / "empty"):
        assert ckpt_tools.inspect(path)["valid"] is False
        assert ckpt_tools.verify(path)["ok"] is False


# -- list, inspect, verify and export of a healthy run -------------------------------------------------
def test_list_shows_every_checkpoint_of_the_run_and_its_mirror(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    os.remove(step_dir(run, 10) / "optimizer.safetensors")
    mirror = tmp_path / "drive"  # run.mirror_dir; the trainer mirrors into <mirror_dir>/checkpoints
    shutil.copytree(step_dir(run, 5), mirror / "checkpoints" / "step-00000005")
    shutil.copytree(step_dir(run, 15), mirror / "checkpoints" / "step-00000015")
    os.truncate(mirror / "checkpoints" / "step-00000015" / "model.safetensors", 100)
    assert cli.main(["ckpt", "list", str(run), "--mirror", str(mirror), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["where"], r["name"]) for r in rows) == sorted(
        [("local", "best"), ("mirror", "step-00000005"), ("mirror", "step-00000015")]
        + [("local", f"step-{s:08d}") for s in STEPS])
    for r in rows:
        if r["name"].startswith("step-"):
            state = json.loads((Path(r["path"]) / "trainer_state.json").read_text())["state"]
            assert (r["kind"], r["step"], r["epoch"], r["batch"]) == (
                "full", state["global_step"], state["epoch"], state["batch_cursor"]), r
    by = {(r["where"], r["name"]): r for r in rows}
    assert by[("local", "best")]["kind"] == "model" and by[("local", "best")]["valid"]
    assert not by[("local", "step-00000010")]["valid"] and "optimizer.safetensors" in by[("local", "step-00000010")]["why"]
    assert not by[("mirror", "step-00000015")]["valid"] and "truncated" in by[("mirror", "step-00000015")]["why"]
    assert [k for k, r in by.items() if r["resume"]] == [("local", "step-00000018")]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # oldest first
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the run's own config names its mirror
    saved["run"]["mirror_dir"] = str(mirror)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert cli.main(["ckpt", "list", str(run)]) == 0
    table = capsys.readouterr().out
    assert "<- resume starts here" in table and table.count("INVALID") == 2 and table.count("valid") >= 6


def test_inspect_reports_the_position_of_a_mid_epoch_checkpoint(finished_run, capsys):
    report = ckpt_tools.inspect(step_dir(finished_run, 15))
    state = json.loads((step_dir(finished_run, 15) / "trainer_state.json").read_text())["state"]
    s = report["state"]
    assert report["valid"] and report["kind"] == "full" and report["step"] == 15
    assert (s["epoch"], s["batch_cursor"], s["global_step"]) == (state["epoch"], state["batch_cursor"], 15)
    assert s["batches_per_epoch"] == 17 and s["share_of_epoch"] == pytest.approx(state["batch_cursor"] / 17)
    assert s["train_fingerprint"] == state["train_fingerprint"] and s["swa_count"] == 0
    assert [f["status"] for f in report["files"]] == ["ok"] * 4
    assert cli.main(["ckpt", "inspect", str(step_dir(finished_run, 15))]) == 0
    out = capsys.readouterr().out
    assert "2 of 2, in progress" in out and f"batch        {state['batch_cursor']} of 17" in out


def test_export_loads_in_transformers_with_the_same_logits(finished_run, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "hf"
    assert cli.main(["ckpt", "export", str(step_dir(finished_run, 18)), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    ours = enstack.model.load(step_dir(finished_run, 18)).eval()
    theirs = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(3, 400, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1:, 12:] = 0
    ids = ids.masked_fill(mask == 0, 1)
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids, attention_mask=mask).logits, ours(ids, mask),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(enstack.CheckpointError, match="not empty"):
        ckpt_tools.export(step_dir(finished_run, 18), out)
    damaged = copy_run(finished_run, tmp_path) / "checkpoints" / "best"
    flip_bit(damaged / "model.safetensors", 200)
    with pytest.raises(enstack.CheckpointError, match="not exporting"):
        ckpt_tools.export(damaged, tmp_path / "hf2")
    assert not (tmp_path / "hf2").exists()


# -- import ----------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _import_and_check(source: Path, cfg, model, optimizer):
    """Imports; the written weights and moments equal the torch model's and optimizer's, by parameter."""
    handler = _Records()
    logging.getLogger("enstack").addHandler(handler)
    try:
        out = ckpt_import.import_checkpoint(source, cfg)
    finally:
        logging.getLogger("enstack").removeHandler(handler)
    assert any("data order of the old run cannot be reproduced" in m for m in handler.messages)
    weights, moments = load_file(out / "model.safetensors"), load_file(out / "optimizer.safetensors")
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        assert torch.equal(weights[name], p.detach()), name
        assert torch.equal(moments[name + ".exp_avg"], state["exp_avg"]), name
        assert torch.equal(moments[name + ".exp_avg_sq"], state["exp_avg_sq"]), name
        assert moments[name + ".step"].item() == float(state["step"]), name
    assert ckpt_tools.verify(out)["ok"]
    return out


def _hf_model(cfg):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    trainer = enstack.Trainer(cfg)
    prepared = trainer.prepare()
    torch.manual_seed(0)
    hf = RobertaForSequenceClassification(RobertaConfig(**enstack.model.config_of(trainer.model)))
    return hf, len(prepared.splits["train"].open()), [n for n, _ in trainer.model.named_parameters()]


def test_import_of_a_transformers_trainer_checkpoint_resumes_with_its_weights_and_moments(data_files, tmp_path):
    from transformers import Trainer, TrainingArguments

    cfg = config(data_files, tmp_path / "run")
    hf, n, _ = _hf_model(cfg)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 400, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.long),
             "labels": torch.tensor(i % 5)} for i in range(n)]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=8,
                             gradient_accumulation_steps=2, learning_rate=1e-3, weight_decay=0.01, save_steps=4,
                             save_strategy="steps", report_to="none", use_cpu=True, logging_steps=1,
                             dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = Trainer(model=hf, args=args, train_dataset=rows)
    trainer.train()
    source = tmp_path / "hf" / "checkpoint-4"
    assert (source / "optimizer.pt").is_file() and (source / "model.safetensors").is_file()
    assert any("enstack ckpt import" in p for p in ckpt_tools.verify(source)["problems"])  # not ours: a hint
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    out = _import_and_check(source, cfg, hf, optimizer)
    assert out == step_dir(tmp_path / "run", 4)
    hf_epoch = json.loads((source / "trainer_state.json").read_text())["epoch"]
    begin, result = fit_begin(data_files, tmp_path / "run")
    assert begin["resumed"] is True and begin["step"] == 4 and begin["epoch"] == 0
    assert begin["batch_cursor"] == round(hf_epoch * 17) == 8  # 4 steps x 2 batches of 17
    assert result.global_step == 18
    imported = ckpt_tools.inspect(out)["state"]["imported_from"]
    assert imported["format"] == "transformers Trainer" and imported["global_step"] == 4
    with pytest.raises(enstack.ConfigError, match="already has a checkpoint"):
        ckpt_import.import_checkpoint(source, cfg)


def test_import_of_an_earlier_pipeline_checkpoint(data_files, tmp_path):
    cfg = config(data_files, tmp_path / "run")
    hf, _, order = _hf_model(cfg)
    # The pipeline's AdamW(model.parameters()) under transformers 4, whose RoBERTa registers its
    # modules in enstack's order: one group, that order.
    params = dict(hf.named_parameters())
    assert order != list(params)  # transformers 5 moved position_embeddings: both orders are exercised
    optimizer = torch.optim.AdamW([params[n] for n in order], lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        ids = torch.randint(3, 400, (4, 12), generator=g)
        torch.nn.functional.cross_entropy(hf(input_ids=ids).logits, torch.arange(4) % 5).backward()
        optimizer.step()
        optimizer.zero_grad()
    source = tmp_path / "pipeline" / "last_checkpoint"
    source.mkdir(parents=True)
    hf.config.save_pretrained(source)
    torch.save(hf.state_dict(), source / "pytorch_model.bin")
    torch.save({"optimizer_state_dict": optimizer.state_dict(), "best_val_f1": 0.3, "epoch": 1, "step": 6,
                "total_batches": 17}, source / "training_state.pth")
    _import_and_check(source, cfg, hf, optimizer)
    begin, _ = fit_begin(data_files, tmp_path / "run", stop=True)
    assert (begin["step"], begin["epoch"], begin["batch_cursor"]) == (3, 0, 6)  # 6 of 17 batches: 3 of 9 steps

    (tmp_path / "run2").mkdir()
    torch.save({"optimizer_state_dict": optimizer.state_dict(), "epoch": 1, "when": datetime.date(2024, 1, 1)},
               source / "training_state.pth")
    with pytest.raises(enstack.CheckpointError, match="weights_only"):
        ckpt_import.import_checkpoint(source, config(data_files, tmp_path / "run2"))


def test_an_optimizer_of_unknown_layout_is_refused():
    shapes = {"a.weight": torch.Size([2, 2]), "a.bias": torch.Size([2])}
    state = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}}
    groups = [{"params": [0], "weight_decay": 0.0}, {"params": [1], "weight_decay": 0.0},
              {"params": [], "weight_decay": 0.0}]
    with pytest.raises(enstack.CheckpointError, match="cannot tell which parameter"):
        ckpt_import._map_moments({"state": state, "param_groups": groups}, shapes, list(shapes), {})
    swapped = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}}
    with pytest.raises(enstack.CheckpointError, match="no parameter order fits"):
        ckpt_import._map_moments({"state": swapped, "param_groups": [{"params": [0, 1]}]}, shapes, list(shapes), {})
