"""Reliability under misuse: bad data is refused at `prepare` (labels outside the model's outputs, a
single training class), text that is not valid UTF-8 is replaced and counted by one rule for training
data and `predict --input`, generated demo data is never reused half written, and the command line
refuses what would destroy or mislead (an --out that is the --input, a run directory that does not
exist, an output_dir that cannot hold a run, eval on other data than the run was prepared with),
each with a typed error printed as one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

import enstack
from enstack import cli
from enstack.cli import run as _cli_run
from enstack.data import load_split, prepare, synthetic

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import TINY  # noqa: E402


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def functions(n: int, label=lambda i: ["CWE-119", "CWE-476"][i % 2]):
    return [{"id": f"f{i}", "func": f"int f{i}(int x)\n{{\n    return x + {i};\n}}", "label": label(i)}
            for i in range(n)]


def config(tmp_path: Path, train, **more):
    sets = {"run.output_dir": str(tmp_path / "run"), "run.num_threads": 1, "data.train": str(train),
            "data.text_column": "func", "data.label_columns": ["label"], "data.label_policy": "class",
            "data.id_column": "id", "model.max_length": 64, "model.tokenizer.vocab_size": 400, **more}
    return enstack.load_config("configs/demo.yaml", overrides=sets)


def call(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, kind: str) -> str:
    """An enstack.Error reaches the user as status 2 and one `enstack: Kind: ...` line (the last on
    stderr, after any log records), never a traceback."""
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"enstack: {kind}: "), err
    return last


# ------------------------------------------------------------------ labels


def test_labels_outside_the_model_outputs_are_refused_at_prepare(tmp_path):
    rows = functions(60, label=lambda i: i % 6)  # integer classes 0..5
    cfg = config(tmp_path, write_rows(tmp_path / "six.jsonl", rows), **{"model.num_labels": 2})
    with pytest.raises(enstack.DataError) as info:
        prepare.prepare(cfg, progress=False)
    message = str(info.value)
    assert "six.jsonl" in message and "model.num_labels 2" in message and "outside 0..1" in message
    named = re.search(r"first ids \(data.id_column 'id'\): ([^)]*)\)", message).group(1).split(", ")
    label_of = {r["id"]: r["label"] for r in rows}
    assert 1 <= len(named) <= 5 and all(label_of[i] >= 2 for i in named)
    assert "5 (label 5)" in message and "Set model.num_labels to 6" in message
    assert not (tmp_path / "run" / "tokenizer").exists()  # refused before a tokenizer was trained


def test_a_validation_file_with_more_classes_than_training_is_refused(tmp_path):
    train = write_rows(tmp_path / "train.jsonl", functions(40))
    more = functions(12, label=lambda i: ["CWE-119", "CWE-476", "CWE-120"][i % 3])
    validation = write_rows(tmp_path / "v.jsonl", more)
    cfg = config(tmp_path, train, **{"data.split": None, "data.validation": str(validation)})
    with pytest.raises(enstack.DataError, match=r"v\.jsonl' \(validation split\).*outside 0\.\.1"):
        prepare.prepare(cfg, progress=False)


def test_a_single_training_class_is_refused_at_prepare(tmp_path, capsys):
    path = write_rows(tmp_path / "one.jsonl", functions(50, label=lambda i: "CWE-119"))
    cfg = config(tmp_path, path)
    with pytest.raises(enstack.DataError) as info:
        prepare.prepare(cfg, progress=False)
    message = str(info.value)
    assert "one.jsonl" in message and "single class (CWE-119 (label 0) 40)" in message
    assert "data.label_policy" in message and "at least two" in message
    sets = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in
            {"run.output_dir": tmp_path / "cli", "data.train": path, "data.text_column": "func",
             "data.label_columns": ["label"], "data.label_policy": "class"}.items()]
    code, _, err = call(capsys, "data", "prepare", "configs/demo.yaml", *[a for s in sets for a in ("--set", s)])
    assert "single class" in assert_one_line_error(code, err, "DataError")


# ------------------------------------------------------------------ text that is not UTF-8


def test_lone_surrogates_and_invalid_utf8_are_replaced_counted_and_reported(tmp_path):
    rows = functions(40)
    path = tmp_path / "bad-text.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[3] = lines[3].replace("return x", "return x\\udc80")  # a JSON escape of a lone surrogate
    body = "\n".join(lines).encode()
    at = body.index(b"return x + 7")
    body = body[:at] + b"\xff\xfe" + body[at:]  # two bytes that are not UTF-8, in row 7
    path.write_bytes(body + b"\n")
    raw = load_split(path, text_column="func", label_columns=["label"], id_column="id")
    assert len(raw) == 40 and not any(re.search("[\ud800-\udfff]", t) for t in raw.texts)
    assert raw.texts[3] == rows[3]["func"].replace("return x", "return x\ufffd")
    assert raw.texts[7] == rows[7]["func"].replace("return x", "\ufffd\ufffdreturn x")
    report = raw.report
    assert (report.replaced_rows, report.replaced_examples, report.bad) == (2, [3, 7], {})
    assert "invalid UTF-8 replaced by U+FFFD in 2 rows (e.g. rows 3, 7)" in report.summary()


def test_predict_input_reads_invalid_utf8_by_the_same_rule_and_names_the_lines(tmp_path, capsys):
    path = tmp_path / "new.jsonl"
    path.write_bytes(b'{"id": "a", "func": "int a;"}\n\n{"id": "b", "func": "int b;\xff"}\n'
                     b'"int c;\\udc80"\n')
    ids, texts = _cli_run.read_functions(path, None, "func")
    assert ids == ["a", "b", "3"] and texts == ["int a;", "int b;\ufffd", "int c;\ufffd"]
    assert "invalid UTF-8 replaced by U+FFFD in 2 functions (lines 3, 4)" in capsys.readouterr().err


# ------------------------------------------------------------------ generated demo data


def test_generated_demo_data_is_checked_and_written_again_when_truncated(tmp_path, capsys):
    cfg = enstack.load_config("configs/demo.yaml", overrides={"run.output_dir": str(tmp_path / "run")})
    prepare.data_dir(cfg).mkdir(parents=True)
    count = lambda raw: sum(len(s) for s in raw.values())  # noqa: E731
    assert count(prepare.load_raw_splits(cfg)) == prepare.DEMO_EXAMPLES
    demo = prepare.data_dir(cfg) / "demo.jsonl"
    whole = demo.read_bytes()
    demo.write_bytes(whole[: len(whole) // 2])  # what a kill or a full disk left of an in-place write
    capsys.readouterr()
    assert count(prepare.load_raw_splits(cfg)) == prepare.DEMO_EXAMPLES
    assert demo.read_bytes() == whole
    assert f"generating the demo data {demo} again" in capsys.readouterr().err
    prepare.load_raw_splits(cfg)  # whole and recorded: reused without a word
    assert "again" not in capsys.readouterr().err


class _DiskFullAfter(list):
    """The generated rows, but iterating them fails part way as a full disk would fail the write."""

    def __iter__(self):
        for i, row in enumerate(list.__iter__(self)):
            if i == 5:
                raise OSError(errno.ENOSPC, "No space left on device")
            yield row


@pytest.mark.parametrize("name", ["demo.jsonl", "demo.jsonl.gz"])
def test_a_failed_demo_write_leaves_the_previous_file_whole(tmp_path, monkeypatch, name):
    path = tmp_path / name
    synthetic.write_jsonl(path, 20, seed=1)
    before = path.read_bytes()
    real = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: _DiskFullAfter(real(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        synthetic.write_jsonl(path, 20, seed=2)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [name]


# ------------------------------------------------------------------ the command line


def test_predict_refuses_an_out_that_is_its_input(tmp_path, capsys):
    functions_file = write_rows(tmp_path / "new.jsonl", functions(3))
    before = functions_file.read_bytes()
    other_spelling = tmp_path / "sub" / ".." / "new.jsonl"
    (tmp_path / "sub").mkdir()
    code, _, err = call(capsys, "predict", "configs/demo.yaml", "--input", functions_file, "--out", other_spelling)
    assert "is the --input file" in assert_one_line_error(code, err, "DataError")
    assert functions_file.read_bytes() == before


def test_ckpt_list_of_a_missing_run_directory_is_an_error(tmp_path, capsys):
    code, _, err = call(capsys, "ckpt", "list", tmp_path / "no-such-run")
    assert "no-such-run' does not exist" in assert_one_line_error(code, err, "CheckpointError")
    (tmp_path / "file").write_text("x")
    code, _, err = call(capsys, "ckpt", "list", tmp_path / "file")
    assert "is a file" in assert_one_line_error(code, err, "CheckpointError")
    (tmp_path / "empty-run").mkdir()
    code, out, _ = call(capsys, "ckpt", "list", tmp_path / "empty-run")
    assert code == 0 and out.strip() == "no checkpoints"


@pytest.mark.parametrize("where, words", [("file", "is a file, not a directory"),
                                          ("file/run", "cannot be created: '{file}' is a file")])
def test_an_output_dir_that_cannot_hold_a_run_is_a_config_error(tmp_path, capsys, where, words):
    (tmp_path / "file").write_text("not a directory")
    out_dir = tmp_path / where
    cfg = enstack.load_config("configs/demo.yaml", overrides={"run.output_dir": str(out_dir)})
    expected = words.replace("{file}", str(tmp_path / "file"))
    with pytest.raises(enstack.ConfigError) as info:
        prepare.prepare(cfg, progress=False)
    assert f"run.output_dir '{out_dir}'" in str(info.value) and expected in str(info.value)
    assert "--set run.output_dir=DIR" in str(info.value)
    # The command line may meet the directory first elsewhere (the run lock); the user still gets
    # a ConfigError naming the key and the path, in one line.
    code, _, err = call(capsys, "data", "prepare", "configs/demo.yaml", "--set", f"run.output_dir={out_dir}")
    line = assert_one_line_error(code, err, "ConfigError")
    assert "run.output_dir" in line and str(out_dir) in line


def test_an_unwritable_output_dir_is_a_config_error(tmp_path, monkeypatch):
    # Root writes through permissions, so a read-only file system is what access() reports here.
    out_dir = tmp_path / "run"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out_dir / "data" else real(p, mode))
    cfg = enstack.load_config("configs/demo.yaml", overrides={"run.output_dir": str(out_dir)})
    with pytest.raises(enstack.ConfigError, match=rf"run.output_dir '{re.escape(str(out_dir))}' is not writable"):
        prepare.prepare(cfg, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (SentencePiece trained from scratch on its data) and its config file."""
    root = tmp_path_factory.mktemp("misuse")
    synthetic.write_jsonl(root / "functions.jsonl", 160, seed=3)
    synthetic.write_jsonl(root / "other.jsonl", 160, seed=4)
    (root / "tiny.json").write_text(json.dumps(TINY))
    cfg = {
        "include": str(Path("configs/demo.yaml").absolute()),
        "run": {"output_dir": str(root / "run"), "num_threads": 1},
        "data": {"train": str(root / "functions.jsonl"), "text_column": "func", "label_columns": ["label"],
                 "label_policy": "class", "id_column": "id"},
        "model": {"name_or_path": str(root / "tiny.json"), "max_length": 64, "tokenizer": {"vocab_size": 400}},
        "train": {"batch_size": 16, "epochs": 1, "eval_strategy": "steps", "eval_steps": 4, "save_steps": 4,
                  "logging_steps": 4, "learning_rate": 1e-3},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", str(path), "--no-plots", "--no-tensorboard"]) == 0
    return path, root


def test_eval_on_other_data_is_refused_and_never_retrains_the_run_tokenizer(trained, capsys):
    config, root = trained
    tokenizer = root / "run" / "tokenizer" / "spm.model"
    run_files = {p: p.read_bytes() for p in (tokenizer, root / "run" / "data" / "train.json")}
    other = f"data.train={root / 'other.jsonl'}"
    code, _, err = call(capsys, "eval", config, "--set", other)
    line = assert_one_line_error(code, err, "DataError")
    assert "other.jsonl" in line and "functions.jsonl" in line and "--allow-changes" in line
    assert all(p.read_bytes() == b for p, b in run_files.items())  # refused before anything was rebuilt
    code, out, err = call(capsys, "eval", config, "--set", other, "--allow-changes", "--json")
    assert code == 0, err
    assert json.loads(out)["count"] > 0
    assert tokenizer.read_bytes() == run_files[tokenizer]  # scored with the run's own tokenizer
    assert "the run keeps it" in err


def test_the_python_api_refuses_to_score_a_checkpoint_on_other_data(trained, tmp_path):
    config, root = trained
    # Data no step of this module has prepared the run with (eval --allow-changes above rebuilds the
    # run's token stores for the data it was given).
    synthetic.write_jsonl(tmp_path / "third.jsonl", 160, seed=5)
    run_files = {p: p.read_bytes() for p in (root / "run" / "tokenizer" / "spm.model",
                                             root / "run" / "data" / "train.json")}
    third = enstack.load_config(str(config), overrides={"data.train": str(tmp_path / "third.jsonl")})
    with pytest.raises(enstack.DataError, match=r"third\.jsonl.*allow_changes=True"):
        enstack.Trainer(third, checkpoint="best").evaluate("train")
    assert all(p.read_bytes() == b for p, b in run_files.items())  # refused before anything was rebuilt
    scored = enstack.Trainer(third, checkpoint="best", allow_changes=True).evaluate("train")
    assert scored["count"] > 0
