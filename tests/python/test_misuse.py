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
from enstack import _cli_run, cli
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


