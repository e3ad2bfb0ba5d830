"""The native training loop: parity with a plain PyTorch loop, exact resume after
SIGKILL (mid-epoch, at an epoch boundary, right after an evaluation), exact
gradient accumulation, Ctrl-C style interruption, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

import enstack
from enstack.data import synthetic

TINY = {"model_type": "roberta", "vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 130, "type_vocab_size": 1,
        "pad_token_id": 1, "layer_norm_eps": 1e-5, "initializer_range": 0.02}


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-data")
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=1)
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


def overrides(data_files, out, **more):
    base = {"run.output_dir": str(out), "run.num_threads": 1, "data.train": str(data_files / "functions.jsonl"),
            "data.text_column": "func", "data.label_columns": ["label"], "data.label_policy": "class",
            "model.name_or_path": str(data_files / "tiny.json"), "model.max_length": 64,
            "model.tokenizer.vocab_size": 400, "train.batch_size": 8, "train.grad_accum": 2, "train.epochs": 2,
            "train.eval_strategy": "steps", "train.eval_steps": 5, "train.save_steps": 5, "train.logging_steps": 1,
            "train.learning_rate": 1e-3, "train.warmup_ratio": 0.1}
    base.update(more)
    return base


def config(data_files, out, **more):
    return enstack.load_config("configs/demo.yaml", overrides=overrides(data_files, out, **more))


# bf16 and fp16: the reference runs its forward under torch.autocast("cpu", dtype); fp16 adds
# torch.amp.GradScaler (unscale before clipping, skip on inf/NaN, and, as enstack does, a
# skipped step advances neither the schedule nor the step count).
# The fp16 run starts at a loss scale of 2**24 so that its first steps overflow and are skipped.
# On a GPU (marked cuda, skipped without one) the same comparison runs with torch.autocast("cuda")
# and torch.amp.GradScaler("cuda"): enstack's fp16 step against torch.amp on CUDA.
# The marks of a test that needs a GPU: the development and CI machines have none, so such tests
# are collected and skipped there; scripts/gpu-check.sh runs them on a GPU machine.
ON_CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                reason="needs a CUDA device; scripts/gpu-check.sh runs it")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_CUDA)])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_first_steps_equal_a_plain_pytorch_loop(data_files, tmp_path, precision, device):
    import contextlib

    from enstack._C.data import EpochPlan, Loader

    init_scale = 2.0 ** 24
    cfg = config(data_files, tmp_path / "run", **{"model.dropout": 0.0, "train.warmup_ratio": 0.25,
                                                   "train.precision": precision, "train.loss_scale": init_scale,
                                                   "run.device": device})
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device, dtype=dtype)) if dtype else contextlib.nullcontext
    trainer = enstack.Trainer(cfg)
    prepared = trainer.prepare()
    store = prepared.splits["train"].open()
    names = prepared.splits["train"].label_names
    # The reference starts from the same initial weights, built independently.
    torch.manual_seed(cfg.run.seed)
    tiny = dict(TINY, vocab_size=store.info["vocab_size"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                id2label={str(i): n for i, n in enumerate(names)})
    reference = enstack.model.from_config(tiny).to(device)
    params = dict(reference.named_parameters())
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.to(device), params[name]), name
    decay = [p for n, p in params.items() if not ("bias" in n or "LayerNorm" in n)]
    no_decay = [p for n, p in params.items() if "bias" in n or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.train.learning_rate, eps=1e-8,
                            fused=True)
    scaler = torch.amp.GradScaler(device, init_scale=init_scale, enabled=precision == "fp16")
    plan = EpochPlan(len(store), 8, cfg.run.seed, 0)
    total_steps = len(plan.windows(2)) * cfg.train.epochs
    sched = get_linear_schedule_with_warmup(opt, -(-total_steps // 4), total_steps)

    def windows():  # (window, its batches) over every epoch, in the trainer's order
        for epoch in range(cfg.train.epochs):
            epoch_plan = EpochPlan(len(store), 8, cfg.run.seed, epoch)
            batches = list(Loader(store, epoch_plan, 0, 1, 64))
            for window in epoch_plan.windows(2):
                yield window, batches[window["first_batch"]:window["end_batch"]]

    steps, done, scales, skipped = 6, 0, [], 0
    reference.train()
    for window, window_batches in windows():
        for b in window_batches:
            with autocast():
                logits = reference(b["input_ids"].to(device), b["attention_mask"].to(device))
            loss = torch.nn.functional.cross_entropy(logits.float(), b["labels"].to(device),
                                                     reduction="sum") / window["num_samples"]
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if precision == "fp16" and scaler.get_scale() < before:
            skipped += 1
            continue
        sched.step()
        done += 1
        scales.append(scaler.get_scale())
        if done == steps:
            break
    logged, logged_skips = [], []

    def on_record(r):
        if r["event"] == "log":
            logged.append(r["loss_scale"])
            logged_skips.append(r["skipped_steps"])
        return not (r["event"] == "log" and r["step"] == steps)

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(resume=False, progress=False, callback=on_record)
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p, params[name], atol=2e-6, rtol=1e-5, msg=name)
    if precision == "fp16":
        assert skipped > 0 and logged_skips[-1] == skipped
        assert logged == scales


RUNNER = textwrap.dedent("""
    import json, os, signal, sys
    import enstack
    overrides, kill_event, kill_step, losses = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    saved = []
    def on_record(r):
        if r["event"] == "log":
            with open(losses, "a") as f:
                f.write(json.dumps([r["step"], r["loss"]]) + "\\n")
        # Reported once the checkpoint is on disk; best/ is reported too, and may land before the
        # step checkpoint of the same step: only a full (step-*) checkpoint is one to resume from.
        if r["event"] == "save" and os.path.basename(r.get("path", "")).startswith("step-"):
            saved.append(r["step"])
        # Killed on the event once a checkpoint is on disk: under load the background write of
        # the step-5 save may still be running at step 7, and the "resume" would start over.
        if r["event"] == kill_event and r["step"] >= kill_step and saved:
            os.kill(os.getpid(), signal.SIGKILL)
    cfg = enstack.load_config("configs/demo.yaml", overrides=overrides)
    print(json.dumps(enstack.Trainer(cfg).fit(resume=True, callback=on_record, progress=False).__dict__))
""")


def run(script, overrides_, kill_event="none", kill_step=-1, losses="/dev/null"):
    return subprocess.run([sys.executable, str(script), json.dumps(overrides_), kill_event, str(kill_step), losses],
                          capture_output=True, text=True, cwd=os.getcwd())


def straight_killed_resumed(script, straight_overrides, killed_overrides, kill_event, kill_step):
    """Runs `script` uninterrupted, then killed at (kill_event, kill_step) and resumed; returns
    the uninterrupted and the resumed process."""
    straight = run(script, straight_overrides)
    assert straight.returncode == 0, straight.stderr
    killed = run(script, killed_overrides, kill_event, kill_step)
    assert killed.returncode == -9, killed.stderr
    resumed = run(script, killed_overrides)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    return straight, resumed


def final_state(out: Path):
    steps = sorted((out / "checkpoints").glob("step-*"))
    last = steps[-1]
    return load_file(last / "model.safetensors"), load_file(last / "optimizer.safetensors"), last.name


def read_losses(path):
    return {step: loss for step, loss in (json.loads(line) for line in Path(path).read_text().splitlines())}


@pytest.mark.parametrize("kill_event, kill_step", [("log", 7), ("save", 10), ("eval", 15)],
                         ids=["mid-epoch", "epoch-boundary", "after-eval"])
def test_resume_after_sigkill_is_bitwise_equal_to_an_uninterrupted_run(data_files, tmp_path, kill_event, kill_step):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    straight = run(script, overrides(data_files, tmp_path / "straight"), losses=str(tmp_path / "straight.jsonl"))
    assert straight.returncode == 0, straight.stderr
    killed = run(script, overrides(data_files, tmp_path / "killed"), kill_event, kill_step, str(tmp_path / "killed.jsonl"))
    assert killed.returncode == -9, killed.stderr
    resumed = run(script, overrides(data_files, tmp_path / "killed"), losses=str(tmp_path / "killed.jsonl"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is True
    a_model, a_opt, a_name = final_state(tmp_path / "straight")
    b_model, b_opt, b_name = final_state(tmp_path / "killed")
    assert a_name == b_name
    assert a_model.keys() == b_model.keys() and a_opt.keys() == b_opt.keys()
    for k in a_model:
        assert torch.equal(a_model[k], b_model[k]), k
    for k in a_opt:
        assert torch.equal(a_opt[k], b_opt[k]), k
    # Losses logged after the resume point are the same numbers.
    a, b = read_losses(tmp_path / "straight.jsonl"), read_losses(tmp_path / "killed.jsonl")
    assert a == b


def test_best_model_and_early_stopping_survive_a_resume_between_evaluations(data_files, tmp_path):
    # Saves every 3 steps, evaluations every 5: the run is killed right after the step-6 save,
    # between the evaluations at 5 and 10. A loss threshold no evaluation can meet makes early
    # stopping end the run at the third evaluation (patience 2), in both runs.
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    more = {"train.save_steps": 3, "train.eval_steps": 5, "train.metric_for_best": "loss",
            "train.greater_is_better": False, "train.early_stopping.patience": 2,
            "train.early_stopping.threshold": 10.0}
    straight, resumed = straight_killed_resumed(script, overrides(data_files, tmp_path / "straight", **more),
                                                overrides(data_files, tmp_path / "killed", **more), "save", 6)
    a, b = json.loads(straight.stdout), json.loads(resumed.stdout)
    assert a["early_stopped"] and b["early_stopped"] and a["global_step"] == b["global_step"] == 15
    for key in ("best_metric", "best_saved_step", "best_eval", "last_eval"):
        assert a[key] == b[key], key
    best_a = load_file(tmp_path / "straight" / "checkpoints" / "best" / "model.safetensors")
    best_b = load_file(tmp_path / "killed" / "checkpoints" / "best" / "model.safetensors")
    assert best_a.keys() == best_b.keys() and all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_accumulation_equals_the_full_batch_update(data_files, tmp_path):
    results = {}
    for name, batch, accum in [("full", 12, 1), ("accum", 6, 2)]:
        cfg = config(data_files, tmp_path / name, **{"model.dropout": 0.0, "train.batch_size": batch,
                                                     "train.grad_accum": accum, "train.epochs": 1,
                                                     "train.max_grad_norm": 0.0})
        trainer = enstack.Trainer(cfg)
        trainer.fit(resume=False, progress=False)
        results[name] = dict(trainer.model.named_parameters())
    # 128 training functions: windows of 12 leave a ragged last window of 8 in both runs.
    for k, v in results["full"].items():
        torch.testing.assert_close(results["accum"][k], v, atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_stopping_writes_recovery_and_resume_continues_exactly(data_files, tmp_path, precision):
    one = {"train.epochs": 1, "train.precision": precision}
    straight = enstack.Trainer(config(data_files, tmp_path / "a", **one))
    steps = straight.fit(resume=False, progress=False).global_step
    interrupted = enstack.Trainer(config(data_files, tmp_path / "b", **one))
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(resume=False, progress=False, callback=lambda r: not (r["event"] == "log" and r["step"] == 3))
    assert (tmp_path / "b" / "checkpoints" / "recovery" / "MANIFEST.json").exists()
    again = enstack.Trainer(config(data_files, tmp_path / "b", **one))
    result = again.fit(resume=True, progress=False)
    assert result.resumed and result.global_step == steps
    for (name, p), (_, q) in zip(straight.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(p, q), name
    # A finished run is not restarted.
    assert enstack.Trainer(config(data_files, tmp_path / "b", **one)).fit(progress=False).global_step == steps


def test_eval_metrics_best_model_and_result(data_files, tmp_path):
    trainer = enstack.Trainer(config(data_files, tmp_path / "run", **{"train.epochs": 1}))
    result = trainer.fit(progress=False)
    validation = trainer.prepare().splits["validation"]
    assert result.best_eval is not None and result.last_eval["count"] == len(validation.ids)
    # Evaluations every 5 steps; the final metrics equal scikit-learn's on the model's predictions.
    metrics = sorted((tmp_path / "run" / "metrics").glob("eval-step-*.json"))
    assert [m.name for m in metrics] == [f"eval-step-{s}.json" for s in range(5, result.global_step + 1, 5)]
    from sklearn.metrics import f1_score

    probs = trainer.predict("validation")
    labels = validation.open().all_labels().long()
    assert trainer.evaluate("validation")["f1_weighted"] == pytest.approx(
        f1_score(labels, probs.argmax(1), average="weighted", zero_division=0), abs=1e-12)
    best = enstack.model.load(result.best_dir)
    assert best.num_labels == 5


def test_a_changed_dataset_refuses_to_resume(data_files, tmp_path):
    enstack.Trainer(config(data_files, tmp_path / "run", **{"train.epochs": 1})).fit(progress=False)
    with pytest.raises(enstack.CheckpointError, match="configuration changed|training data changed"):
        enstack.Trainer(config(data_files, tmp_path / "run", **{"train.epochs": 1, "model.max_length": 48})).fit(
            progress=False)


def test_batch_size_zero_is_a_config_error(data_files, tmp_path):
    with pytest.raises(enstack.ConfigError, match="batch_size"):
        config(data_files, tmp_path / "run", **{"train.batch_size": 0})


def test_ctrl_c_writes_recovery_and_the_cli_exits_130(data_files, tmp_path):
    import signal
    import time

    sets = [f"{k}={json.dumps(v)}" for k, v in overrides(data_files, tmp_path / "run", **{"train.epochs": 50}).items()]
    args = [sys.executable, "-m", "enstack.cli", "train", "configs/demo.yaml"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "run" / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Colab's "Interrupt" does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "fit(resume=True) continues" in err
    manifest = enstack._C.ckpt.verify(str(tmp_path / "run" / "checkpoints" / "recovery"))
    assert manifest["kind"] == "full" and manifest["step"] >= 5


def test_predict_restores_the_store_order_after_length_sorting(data_files, tmp_path):
    trainer = enstack.Trainer(config(data_files, tmp_path / "run"))
    prepared = trainer.prepare()
    store = prepared.splits["train"].open()
    probs = prepared.native.predict(store, 3)
    logits = prepared.native.predict(store, 5, "logits")
    trainer.model.eval()
    with torch.no_grad():  # one example at a time, in the store's order: no padding, no sorting
        reference = torch.cat([trainer.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                               for ids in (store.ids(i) for i in range(len(store)))])
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, torch.softmax(reference, 1), atol=1e-6, rtol=1e-5)
    with pytest.raises(enstack.ConfigError, match="probabilities"):
        prepared.native.predict(store, 0, "scores")
