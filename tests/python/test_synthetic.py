"""The embedded demo data: deterministic, balanced, C-shaped, long-tailed, and readable by the
real ingestion path (VDISC HDF5 and JSONL)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

import enstack
from enstack.data import load_split, synthetic

CLASSES = ["CWE-119", "CWE-120", "CWE-469", "CWE-476", "CWE-other"]


def test_same_seed_same_output_other_seed_other_output():
    a = synthetic.generate(60, seed=11, vulnerable_share=0.7)
    assert a == synthetic.generate(60, seed=11, vulnerable_share=0.7)
    b = synthetic.generate(60, seed=12, vulnerable_share=0.7)
    assert [r["func"] for r in a] != [r["func"] for r in b]
    assert len({r["id"] for r in a}) == 60


def test_every_class_present_in_the_requested_balance():
    rows = synthetic.generate(1000, seed=0, vulnerable_share=0.6)
    labels = Counter(r["label"] for r in rows)
    assert labels == {"safe": 400, **{c: 120 for c in CLASSES}}
    assert Counter(r["cwe"] for r in rows if not r["vulnerable"]) == {c: 80 for c in CLASSES}
    assert all(r["label"] == (r["cwe"] if r["vulnerable"] else "safe") for r in rows)
    assert set(synthetic.CLASSES) == set(CLASSES)
    assert Counter(r["label"] for r in synthetic.generate(7, seed=1)).keys() <= set(CLASSES)
    with pytest.raises(enstack.ConfigError):
        synthetic.generate(10, vulnerable_share=1.5)


def strip_literals(code: str) -> str:
    code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
    code = re.sub(r"'(\\.|[^'\\])*'", "''", code)
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", code, flags=re.DOTALL)


def balanced(code: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in strip_literals(code):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


def test_functions_are_c_shaped():
    for row in synthetic.generate(500, seed=3, vulnerable_share=0.5):
        func = row["func"]
        assert balanced(func), func
        assert func.rstrip().endswith("}") and func == func.strip()
        signature = next(line for line in func.splitlines() if not line.startswith("/*"))
        assert re.match(r"(static )?[\w ]+\**\s*\w+\(.*\)( \{)?$", signature), signature
    styles = Counter("\t" in r["func"] for r in synthetic.generate(200, seed=4))
    assert styles[True] > 10 and styles[False] > 10  # tabs and spaces both occur


def test_length_distribution_has_a_long_tail():
    lengths = np.array([len(r["func"]) for r in synthetic.generate(2000, seed=5)])
    assert 100 <= np.median(lengths) < 1000
    assert lengths.min() > 60
    assert 0.02 < (lengths > 2000).mean() < 0.25


@pytest.mark.parametrize("cwe", CLASSES)
def test_vulnerable_and_safe_twins_differ_only_a_little(cwe):
    for seed in range(40):
        bad, good = synthetic.make_function(cwe, True, seed), synthetic.make_function(cwe, False, seed)
        assert bad != good
        assert bad.splitlines()[0] == good.splitlines()[0]  # same names and shape
        assert abs(len(bad.splitlines()) - len(good.splitlines())) <= 6


def test_flaw_markers_appear_where_expected():
    rows = synthetic.generate(500, seed=6, vulnerable_share=0.5)
    unsafe_calls = re.compile(r"\b(strcpy|strcat|sprintf|gets|memcpy|recv)\(")
    cwe120 = [r for r in rows if r["cwe"] == "CWE-120" and r["vulnerable"]]
    assert all(unsafe_calls.search(r["func"]) for r in cwe120)
    assert all("-" in r["func"] for r in rows if r["cwe"] == "CWE-469")


def test_vdisc_hdf5_round_trips_through_load_split(tmp_path):
    pytest.importorskip("h5py")
    path = synthetic.write_vdisc_hdf5(tmp_path / "demo.hdf5", 200, seed=9, vulnerable_share=0.75)
    rows = synthetic.generate(200, seed=9, vulnerable_share=0.75)
    raw = load_split(path, label_policy="enstack5", chunk_rows=16)
    vulnerable = [(i, r) for i, r in enumerate(rows) if r["vulnerable"]]
    assert len(raw) == 150 and raw.report.filtered == 50 and raw.report.bad_rows == 0
    assert raw.ids == [str(i) for i, _ in vulnerable]
    assert raw.texts == [r["func"] for _, r in vulnerable]
    assert [raw.label_names[k] for k in raw.labels.tolist()] == [r["cwe"] for _, r in vulnerable]
    binary = load_split(path, label_policy="binary")
    assert binary.labels.tolist() == [int(r["vulnerable"]) for r in rows]


def test_jsonl_writer_round_trips(tmp_path):
    path = synthetic.write_jsonl(tmp_path / "demo.jsonl.gz", 50, seed=2, vulnerable_share=0.5)
    raw = load_split(path, text_column="func", label_columns=["label"], id_column="id")
    rows = synthetic.generate(50, seed=2, vulnerable_share=0.5)
    assert raw.ids == [r["id"] for r in rows] and raw.texts == [r["func"] for r in rows]
    assert raw.label_names == sorted({r["label"] for r in rows})
    plain = tmp_path / "demo.jsonl"
    synthetic.write_jsonl(plain, 3, seed=2)
    assert [json.loads(line)["id"] for line in plain.read_text().splitlines()] == [
        r["id"] for r in synthetic.generate(3, seed=2)]


def test_docstring_says_what_it_is_and_is_not():
    doc = " ".join(synthetic.__doc__.lower().split())
    assert "synthetic" in doc and "without a download" in doc and "what it is not: a benchmark" in doc
