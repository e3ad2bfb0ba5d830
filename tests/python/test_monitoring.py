"""Monitoring: TensorBoard events read back with tensorboard's EventAccumulator (also across a
SIGKILL and resume: every step once), the JSON-lines training log, PNG plots (valid, non-blank,
ROC against scikit-learn), the progress bar and FitResult."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import enstack
from enstack.monitor import history, plots
from enstack.monitor.progress import ProgressBar
from enstack.monitor.tensorboard import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TINY, overrides  # noqa: E402  (the tiny model and data of the trainer tests)

from enstack.data import synthetic  # noqa: E402

LABELS = ["CWE-119", "CWE-120", "CWE-469", "CWE-476", "CWE-other"]


def read_events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_and_values(acc, tag):
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def assert_png(path, min_side=200):
    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= min_side
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, f"{path} looks blank"


# ------------------------------------------------------------------ TensorBoard, synthetic records


def log_record(step, loss, **more):
    return {"event": "log", "step": step, "total_steps": 10, "epoch": step / 10, "loss": loss,
            "learning_rate": 1e-3 * step, "grad_norm": 0.5, "loss_scale": 65536.0, "skipped_steps": 1,
            "samples_per_second": 100.0 + step, "tokens_per_second": 5000.0, **more}


def eval_record(step, accuracy):
    confusion = [[2, 1], [0, 3]]
    return {"event": "eval", "step": step, "best": True, "metrics": {
        "step": step, "accuracy": accuracy, "f1_weighted": 0.8, "f1_macro": 0.75, "loss": 0.4, "auc_weighted": None,
        "confusion": confusion, "confusion_percent": [[66.7, 33.3], [0.0, 100.0]],
        "per_class": [{"label": "a", "f1": 0.8, "precision": 1.0, "recall": 0.67, "auc": 0.9, "support": 3},
                      {"label": "b", "f1": 0.86, "precision": 0.75, "recall": 1.0, "auc": None, "support": 3}]}}


def test_tensorboard_writes_every_field_and_a_resume_keeps_each_step_once(tmp_path):
    tb = TensorBoardLogger(tmp_path / "logs")
    tb({"event": "begin", "step": 0, "total_steps": 10, "resumed": False})
    for step in range(1, 9):  # the first session dies after step 8; its last checkpoint is at step 5
        tb(log_record(step, loss=10.0 + step, rss_bytes=3 * 2**30, cuda_max_allocated_bytes=2**29))
        if step == 5:
            tb(eval_record(5, accuracy=0.5))
        if step == 6:
            tb({"event": "save_error", "step": 6, "error": "No space left on device"})
    tb.close()
    tb = TensorBoardLogger(tmp_path / "logs")
    tb({"event": "begin", "step": 5, "total_steps": 10, "resumed": True})
    for step in range(6, 11):
        tb(log_record(step, loss=float(step)))
    tb(eval_record(10, accuracy=0.9))
    tb({"event": "end", "step": 10})
    tb.close()

    acc = read_events(tmp_path / "logs")
    steps, losses = steps_and_values(acc, "train/loss")
    assert steps == list(range(1, 11))
    # Steps 6..8 come from the resumed session: the orphans of the first were purged.
    assert losses == pytest.approx([11, 12, 13, 14, 15, 6, 7, 8, 9, 10])
    assert steps_and_values(acc, "train/learning_rate")[1] == pytest.approx([1e-3 * s for s in range(1, 11)])
    for tag, value in [("train/grad_norm", 0.5), ("train/loss_scale", 65536.0), ("train/skipped_steps", 1.0),
                       ("train/tokens_per_second", 5000.0)]:
        assert steps_and_values(acc, tag)[1] == pytest.approx([value] * 10), tag
    assert steps_and_values(acc, "train/samples_per_second")[1][0] == pytest.approx(101.0)
    assert steps_and_values(acc, "memory/rss_gib") == ([1, 2, 3, 4, 5], [pytest.approx(3.0)] * 5)
    assert steps_and_values(acc, "memory/cuda_max_allocated_gib")[1][0] == pytest.approx(0.5)
    assert steps_and_values(acc, "eval/accuracy") == ([5, 10], [pytest.approx(0.5), pytest.approx(0.9)])
    assert "eval/auc_weighted" not in acc.Tags()["scalars"]  # None (a class missing) is not plotted as 0
    assert steps_and_values(acc, "eval_per_class/recall/a")[1][0] == pytest.approx(0.67)
    assert "eval_per_class/auc/b" not in acc.Tags()["scalars"]
    for tag in ("eval/confusion", "eval/confusion_percent"):
        images = acc.Images(tag)
        assert [i.step for i in images] == [5, 10]
        assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100
    # A save error is history worth keeping even when its session was lost.
    (text,) = [t for t in acc.Tags()["tensors"] if "save_error" in t]
    assert b"No space left on device" in acc.Tensors(text)[0].tensor_proto.string_val[0]


def test_tensorboard_keeps_a_save_error_before_the_resume_point(tmp_path):
    tb = TensorBoardLogger(tmp_path / "logs", images=False)
    tb({"event": "begin", "step": 0, "total_steps": 10, "resumed": False})
    tb({"event": "save_error", "step": 3, "error": "Input/output error"})
    tb(eval_record(3, accuracy=0.5))
    tb.close()
    acc = read_events(tmp_path / "logs")
    (tag,) = [t for t in acc.Tags()["tensors"] if "save_error" in t]
    text = acc.Tensors(tag)[0].tensor_proto.string_val[0].decode()
    assert "Input/output error" in text
    assert acc.Tags()["images"] == []


# ------------------------------------------------------------------ a real run, killed and resumed

RUNNER = textwrap.dedent("""
    import json, os, signal, sys
    import enstack
    saved = []
    def on_record(r):
        # Reported once the checkpoint is on disk; best/ is reported too and may land first.
        if r["event"] == "save" and os.path.basename(r.get("path", "")).startswith("step-"):
            saved.append(r["step"])
        # After the checkpoint of step 5 is on disk (under load its background write can still
        # be running at step 8): the steps logged since are orphans.
        if r["event"] == "log" and r["step"] >= 8 and saved:
            os.kill(os.getpid(), signal.SIGKILL)
    cfg = enstack.load_config("configs/demo.yaml", overrides=json.loads(sys.argv[1]))
    enstack.Trainer(cfg).fit(resume=True, callback=on_record, progress=False)
""")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=1)
    (root / "tiny.json").write_text(json.dumps(TINY))
    out = root / "run"
    ov = overrides(root, out)  # 2 epochs x 9 steps, log every step, eval and save every 5
    (root / "runner.py").write_text(RUNNER)
    killed = subprocess.run([sys.executable, str(root / "runner.py"), json.dumps(ov)], capture_output=True,
                            text=True, cwd=os.getcwd(), env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    records = []
    result = enstack.Trainer(enstack.load_config("configs/demo.yaml", overrides=ov)).fit(
        resume=True, progress=False, callback=records.append)
    return out, result, records


def test_the_real_run_logs_every_step_once_and_evals_match_the_metrics_files(run):
    out, result, records = run
    assert result.resumed and result.global_step == 18
    acc = read_events(out / "logs")
    steps, losses = steps_and_values(acc, "train/loss")
    assert steps == list(range(1, 19))
    logged = {r["step"]: r for r in records if r["event"] == "log"}
    assert losses[5:] == pytest.approx([logged[s]["loss"] for s in range(6, 19)])
    eval_steps, f1 = steps_and_values(acc, "eval/f1_weighted")
    assert eval_steps == [5, 10, 15]
    for step, value in zip(eval_steps, f1):
        saved = json.loads((out / "metrics" / f"eval-step-{step}.json").read_text())
        assert value == pytest.approx(saved["f1_weighted"])
    assert [i.step for i in acc.Images("eval/confusion_percent")] == [5, 10, 15]


def test_the_training_log_has_every_step_once(run):
    out, _, records = run
    log = history.read_train_log(out / "metrics")
    assert [r["step"] for r in log] == list(range(1, 19))
    assert log[-1]["loss"] == pytest.approx([r for r in records if r["event"] == "log"][-1]["loss"])
    assert [e["step"] for e in history.read_evals(out / "metrics")] == [5, 10, 15]


def test_fit_draws_curves_confusion_matrices_and_roc(run):
    out, _, _ = run
    for name in ("training-curves.png", "validation-confusion.png", "validation-confusion-percent.png",
                 "validation-roc.png"):
        assert_png(out / "metrics" / name)
    assert not list((out / "metrics").glob("*.tmp*"))


def test_fit_result_has_swa_fields_and_keeps_unknown_keys():
    native = {"global_step": 3, "epochs_completed": 1, "early_stopped": False, "resumed": False,
              "last_eval": None, "best_eval": None, "best_metric": None, "best_dir": "b", "last_checkpoint": "l"}
    result = enstack.FitResult.from_native(native)
    assert result.swa_eval is None and result.swa_dir is None and result.extra == {}
    newer = enstack.FitResult.from_native({**native, "swa_eval": {"accuracy": 1.0}, "swa_dir": "s", "wall_s": 2.0})
    assert newer.swa_dir == "s" and newer.swa_eval == {"accuracy": 1.0} and newer.extra == {"wall_s": 2.0}


def test_monitoring_can_be_turned_off(tmp_path):
    root = tmp_path
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=1)
    (root / "tiny.json").write_text(json.dumps(TINY))
    cfg = enstack.load_config("configs/demo.yaml", overrides=overrides(root, root / "run", **{"train.epochs": 1}))
    enstack.Trainer(cfg).fit(progress=False, tensorboard=False, plots=False)
    assert not (root / "run" / "logs").exists()
    assert not list((root / "run" / "metrics").glob("*.png"))


# ------------------------------------------------------------------ plots


def test_roc_curve_equals_scikit_learn():
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc

    rng = np.random.default_rng(0)
    positives = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + positives * 0.4, 2)  # rounding makes ties
    fpr, tpr, auc = plots.roc_curve(scores, positives)
    sk_fpr, sk_tpr, _ = sk_roc(positives, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert auc == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)
    assert np.isnan(plots.roc_curve([0.1, 0.2], [True, True])[2])


def test_confusion_percent_is_of_each_true_class(tmp_path):
    fig = plots.confusion_figure([[1, 3], [0, 0]], ["a", "b"], percent=True)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["25.0%", "75.0%", "0.0%", "0.0%"]  # an empty row stays 0, not NaN
    counts = plots.confusion_figure([[1, 3], [0, 1200]], ["a", "b"])
    assert [t.get_text() for t in counts.axes[0].texts] == ["1", "3", "0", "1,200"]
    with pytest.raises(ValueError, match="square"):
        plots.confusion_figure([[1, 2, 3]], ["a"])
    with pytest.raises(ValueError, match="labels"):
        plots.plot_confusion([[1, 0], [0, 1]], ["a"], tmp_path / "x.png")


def test_plot_functions_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 200)
    logits = rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert_png(plots.plot_roc(probs, labels, LABELS, tmp_path / "roc.png"))
    assert_png(plots.plot_confusion([[5, 1], [2, 7]], ["a", "b"], tmp_path / "c.png", percent=True))
    log = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4, "grad_norm": 1.0} for s in range(1, 30)]
    evals = [{"step": 10, "loss": 0.5, "accuracy": 0.7, "f1_weighted": 0.6, "auc_weighted": None}]
    assert_png(plots.plot_training_curves(log, evals, tmp_path / "curves.png"))
    assert_png(plots.plot_training_curves([], [], tmp_path / "empty.png"), min_side=100)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        plots.plot_roc(probs[:10], labels, LABELS, tmp_path / "bad.png")


def test_write_run_plots_without_predictions_draws_the_newest_eval(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for step in (5, 10):
        (metrics / f"eval-step-{step}.json").write_text(json.dumps(eval_record(step, 0.5)["metrics"]))
    written = plots.write_run_plots(tmp_path)
    assert [p.name for p in written] == ["training-curves.png", "eval-confusion.png", "eval-confusion-percent.png"]
    for p in written:
        assert_png(p)


# ------------------------------------------------------------------ training log, progress bar


def test_train_log_drops_orphans_on_resume_and_skips_a_torn_line(tmp_path):
    log = history.TrainLog(tmp_path)
    log({"event": "begin", "step": 0, "resumed": False})
    for s in range(1, 8):
        log({"event": "log", "step": s, "loss": float(s)})
    log.close()
    with open(tmp_path / "train-log.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # killed mid-write
    log = history.TrainLog(tmp_path)
    log({"event": "begin", "step": 5, "resumed": True})
    log({"event": "log", "step": 6, "loss": 60.0})
    log({"event": "end"})
    assert [(r["step"], r["loss"]) for r in history.read_train_log(tmp_path)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 60.0)]
    log = history.TrainLog(tmp_path)
    log({"event": "begin", "step": 0, "resumed": False})  # a fresh start forgets the old run
    log.close()
    assert history.read_train_log(tmp_path) == []


def test_progress_bar_counts_the_steps_this_session_runs(capsys):
    bar = ProgressBar(True)
    bar.update({"event": "begin", "step": 40, "total_steps": 100, "resumed": True})
    assert bar.bar.total == 60 and "resumed at step 40" in bar.bar.desc
    bar.update(log_record(50, loss=1.25, rss_bytes=2 * 2**30))
    bar.update({"event": "eval", "step": 50, "metrics": {"f1_weighted": 0.5}})
    bar.update({"event": "save_error", "step": 50, "error": "Drive quota exceeded"})
    assert bar.bar.n == 10
    assert bar.bar.postfix and "loss=1.2500" in bar.bar.postfix and "mem=2.0G" in bar.bar.postfix
    assert "eval_f1w=0.5000" in bar.bar.postfix
    bar.close()
    assert "Drive quota exceeded" in capsys.readouterr().err
    quiet = ProgressBar(False)
    quiet.update({"event": "begin", "step": 0, "total_steps": 10, "resumed": False})
    assert quiet.bar is None
