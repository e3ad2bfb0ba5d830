"""The ``enstack`` command line: eval, predict (a split, or new functions), bench, --help on each,
errors as one message on stderr with a non-zero status (a traceback only with --debug), and the
refusal to resume a run whose configuration changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import enstack
from enstack import cli
from enstack.cli import run as _cli_run

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TINY  # noqa: E402

from enstack.data import synthetic  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run and its config file (one epoch, eval and save every 5 steps)."""
    root = tmp_path_factory.mktemp("cli")
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=3)
    (root / "tiny.json").write_text(json.dumps(TINY))
    config = {
        "include": str(Path("configs/demo.yaml").absolute()),
        "run": {"output_dir": str(root / "run"), "num_threads": 1},
        "data": {"train": str(root / "functions.jsonl"), "text_column": "func", "label_columns": ["label"],
                 "label_policy": "class", "id_column": "id"},
        "model": {"name_or_path": str(root / "tiny.json"), "max_length": 64, "tokenizer": {"vocab_size": 400}},
        "train": {"batch_size": 8, "grad_accum": 2, "epochs": 1, "eval_strategy": "steps", "eval_steps": 5,
                  "save_steps": 5, "logging_steps": 5, "learning_rate": 1e-3},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["train", str(path), "--no-plots", "--no-tensorboard"]) == 0
    return path, root


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_json_equals_the_best_evaluation_of_training(run, capsys):
    config, root = run
    code, out, err = call(capsys, "eval", config, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert Path(metrics["checkpoint"]).name == "best" and metrics["split"] == "validation"
    state = json.loads((root / "run" / "checkpoints" / "best" / "MANIFEST.json").read_text())
    saved = json.loads((root / "run" / "metrics" / f"eval-step-{state['step']}.json").read_text())
    assert metrics["confusion"] == saved["confusion"]
    for key in ("accuracy", "f1_weighted", "f1_macro", "loss", "auc_weighted"):
        assert metrics[key] == pytest.approx(saved[key]), key


def test_eval_prints_a_table_and_draws_plots(run, capsys):
    config, root = run
    code, out, err = call(capsys, "eval", config, "--split", "test", "--checkpoint", "last", "--plots")
    assert code == 0, err
    assert "test split, checkpoint" in out and "f1            weighted" in out and "confusion (rows: true" in out
    for name in ("confusion", "confusion-percent", "roc"):
        path = root / "run" / "metrics" / f"test-step-00000009-{name}.png"
        assert path.read_bytes()[:4] == b"\x89PNG", path


def test_predict_a_split_to_npy(run, capsys, tmp_path):
    config, _ = run
    code, out, err = call(capsys, "predict", config, "--split", "test", "--out", tmp_path / "p.npy")
    assert code == 0, err
    probs = np.load(tmp_path / "p.npy")
    expected = enstack.Trainer(enstack.load_config(config), checkpoint="best").predict("test")
    assert probs.dtype == np.float32 and probs.shape == tuple(expected.shape)
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert "wrote probabilities [" in out


def test_predict_new_functions_tokenizes_them_as_the_run_did(run, capsys, tmp_path):
    config, root = run
    code, _, err = call(capsys, "predict", config, "--out", tmp_path / "test.jsonl")
    assert code == 0, err
    split = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    rows = {r["id"]: r for r in map(json.loads, (root / "functions.jsonl").read_text().splitlines())}
    # The test split's functions, given as new code (with the id field): the same probabilities.
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"id": p["id"], "func": rows[p["id"]]["func"]}) + "\n" for p in split))
    code, out, err = call(capsys, "predict", config, "--input", new, "--out", tmp_path / "new-out.jsonl")
    assert code == 0, err
    again = [json.loads(line) for line in (tmp_path / "new-out.jsonl").read_text().splitlines()]
    assert [a["id"] for a in again] == [p["id"] for p in split]
    for a, p in zip(again, split):
        assert a["label"] == p["label"] and "true_label" in p and "true_label" not in a
        assert a["probabilities"] == pytest.approx(p["probabilities"], abs=1e-6)
    # Plain JSON strings, and a field named on the command line.
    (tmp_path / "strings.jsonl").write_text(json.dumps(rows[split[0]["id"]]["func"]) + "\n")
    assert call(capsys, "predict", config, "--input", tmp_path / "strings.jsonl", "--out", tmp_path / "s.npy")[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "s.npy")[0], list(split[0]["probabilities"].values()), atol=1e-6)
    (tmp_path / "code.jsonl").write_text(json.dumps({"src": "int f(void) { return 0; }"}) + "\n")
    code, _, err = call(capsys, "predict", config, "--input", tmp_path / "code.jsonl", "--out", tmp_path / "c.npy")
    assert code == 2 and "--text-field" in err
    assert call(capsys, "predict", config, "--input", tmp_path / "code.jsonl", "--text-field", "src",
                "--out", tmp_path / "c.npy")[0] == 0


def test_predict_texts_matches_the_token_store_path(run):
    config, root = run
    trainer = enstack.Trainer(enstack.load_config(config), checkpoint="best")
    rows = [json.loads(line) for line in (root / "functions.jsonl").read_text().splitlines()[:3]]
    probs = trainer.predict_texts([r["func"] for r in rows])
    assert probs.shape == (3, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, dtype=probs.dtype))
    assert trainer.label_names() == ["CWE-119", "CWE-120", "CWE-469", "CWE-476", "CWE-other"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "no-such.yaml"], "ConfigError: config file 'no-such.yaml' does not exist"),
    (["eval", "{config}", "--checkpoint", "swa"], "there is no checkpoint directory"),
    (["eval", "{config}", "--checkpoint", "/no/such/dir"], "there is no checkpoint directory /no/such/dir"),
    (["predict", "{config}", "--out", "p.csv"], "must end in .npy"),
    (["predict", "{config}", "--input", "/no/such.jsonl", "--out", "p.npy"], "--input '/no/such.jsonl' does not"),
    (["bench", "no-such-benchmark"], "no benchmark 'no-such-benchmark'; there are: checkpoint, ddp, encoder"),
])
def test_errors_are_one_line_on_stderr_without_traceback(run, capsys, argv, message):
    config, _ = run
    code, out, err = call(capsys, *[a.replace("{config}", str(config)) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("enstack: ")


def test_debug_anywhere_shows_the_traceback(capsys):
    with pytest.raises(enstack.ConfigError, match="does not exist"):
        cli.main(["eval", "no-such.yaml", "--debug"])
    with pytest.raises(enstack.ConfigError):
        cli.main(["--debug", "eval", "no-such.yaml"])


def test_the_installed_command_exits_non_zero_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "enstack.cli", "predict", "no-such.yaml", "--out", "x.npy"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "enstack: ConfigError: config file 'no-such.yaml' does not exist (looked at " \
        f"'{Path('no-such.yaml').absolute()}'); check the path."


@pytest.mark.parametrize("command", [["eval"], ["predict"], ["bench"], ["train"], ["data", "prepare"], []])
def test_help_on_each_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: enstack")
    expected = {"eval": "--checkpoint", "predict": "--input", "bench": "NAME", "train": "--allow-changes"}
    assert expected.get(command[0] if command else "", "usage") in out


def test_bench_lists_and_runs_scripts(capfd, tmp_path, monkeypatch):
    code, out, _ = call(capfd, "bench")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[:-2] if line.strip()}
    assert {"encoder", "train", "resume"} <= listed
    (tmp_path / "echo.py").write_text('"""Echoes its arguments."""\nimport sys\nprint(sys.argv[1:])\nsys.exit(3)\n')
    monkeypatch.setattr(_cli_run, "benchmarks_dir", lambda: tmp_path)
    assert cli.main(["bench"]) == 0
    assert "echo  Echoes its arguments." in capfd.readouterr().out
    assert cli.main(["bench", "echo", "--size", "tiny"]) == 3  # the benchmark's own exit status
    assert "['--size', 'tiny']" in capfd.readouterr().out


def test_a_changed_configuration_names_the_changes_and_the_flags(run, capsys):
    config, root = run
    code, _, err = call(capsys, "train", config, "--set", "train.learning_rate=0.002", "--no-plots", "--no-tensorboard")
    assert code == 2 and "Traceback" not in err
    assert "Changed since then: train.learning_rate: 0.001 -> 0.002" in err
    assert "--allow-changes" in err and "--set run.output_dir=NEW_DIR" in err
    code, out, err = call(capsys, "train", config, "--set", "train.learning_rate=0.002", "--allow-changes",
                          "--no-plots", "--no-tensorboard")
    assert code == 0, err
    assert "trained to step 9" in out
    # The run had finished, so nothing trained with the new settings: its recorded configuration (what
    # the next refusal is compared with) stays that of its checkpoints.
    assert yaml.safe_load((root / "run" / "config.yaml").read_text())["train"]["learning_rate"] == 0.001
