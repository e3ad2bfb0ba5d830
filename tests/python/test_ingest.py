"""Ingestion of raw labelled functions: VDISC HDF5 in chunks, label policies, downsampling,
tabular formats, pickle refusal, bad-row accounting and stratified (grouped) splits.

Expected labels are computed here row by row from the flags we wrote, not by enstack."""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import enstack
from enstack.data import IngestReport, RawSplit, load_split, split_stratified

CWES = ["CWE-119", "CWE-120", "CWE-469", "CWE-476", "CWE-other"]
JULIET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "juliet" / "juliet_c.jsonl.gz"


def make_rows(n: int, seed: int = 0, p: float = 0.2):
    rng = np.random.default_rng(seed)
    flags = rng.random((n, 5)) < p
    texts = [f"int f{i}(int x)\n{{\n    return x + {i}; // é\n}}" for i in range(n)]
    return texts, flags


def write_vdisc(path: Path, texts, flags, kind: str = "utf8") -> Path:
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        if kind == "utf8":
            f.create_dataset("functionSource", data=texts, dtype=h5py.string_dtype("utf-8"))
        elif kind == "bytes":
            data = [t.encode("utf-8") if isinstance(t, str) else t for t in texts]
            f.create_dataset("functionSource", data=data, dtype=h5py.string_dtype("ascii"))
        else:  # fixed-length byte strings
            f.create_dataset("functionSource", data=np.array([t.encode("utf-8") for t in texts], dtype="S"))
        for k, name in enumerate(CWES):
            f.create_dataset(name, data=np.asarray(flags)[:, k].astype(bool))
    return path


def expected(flags, policy):
    """Row-by-row labels: (kept row numbers, labels) for a VDISC policy."""
    rows, labels = [], []
    for i, row in enumerate(np.asarray(flags).tolist()):
        if policy == "enstack5":
            if any(row):
                rows.append(i)
                labels.append(next(k for k, v in enumerate(row) if v))
        elif policy == "binary":
            rows.append(i)
            labels.append(int(any(row)))
        else:
            rows.append(i)
            labels.append([int(v) for v in row])
    return rows, labels


@pytest.mark.parametrize("kind", ["utf8", "bytes", "fixed"])
@pytest.mark.parametrize("policy", ["enstack5", "binary", "multilabel"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 65536])
def test_vdisc_policies_give_the_independently_computed_labels(tmp_path, kind, policy, chunk_rows):
    texts, flags = make_rows(103, seed=1)
    path = write_vdisc(tmp_path / "vdisc.hdf5", texts, flags, kind)
    raw = load_split(path, label_policy=policy, chunk_rows=chunk_rows)
    rows, labels = expected(flags, policy)
    assert raw.ids == [str(r) for r in rows]
    assert raw.texts == [texts[r] for r in rows]
    if policy == "multilabel":
        assert raw.labels.dtype == np.uint8 and raw.labels.shape == (len(rows), 5)
        assert raw.label_names == CWES
    else:
        assert raw.labels.dtype == np.int64 and raw.labels.ndim == 1
        assert raw.label_names == (CWES if policy == "enstack5" else ["not-vulnerable", "vulnerable"])
    assert raw.labels.tolist() == labels
    assert raw.report.rows_read == 103 and raw.report.rows_kept == len(rows)
    assert raw.report.filtered == (103 - len(rows) if policy == "enstack5" else 0)


def test_bytes_that_are_not_utf8_are_replaced_not_fatal(tmp_path):
    h5py = pytest.importorskip("h5py")
    texts, flags = make_rows(4)
    flags[:] = True
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("functionSource", data=[b"int a;\xff\xfe", *(t.encode() for t in texts[1:])],
                         dtype=h5py.string_dtype("ascii"))
        for k, name in enumerate(CWES):
            f.create_dataset(name, data=flags[:, k])
    raw = load_split(tmp_path / "x.h5")
    assert raw.texts[0] == "int a;\ufffd\ufffd" and len(raw) == 4


def test_priority_order_is_column_order(tmp_path):
    texts, _ = make_rows(2)
    flags = np.array([[0, 1, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=bool)
    raw = load_split(write_vdisc(tmp_path / "p.h5", texts, flags))
    assert raw.labels.tolist() == [1, 2]  # CWE-120 beats 476/other; CWE-469 beats 476


def test_downsampling_is_seeded_exact_and_independent_of_chunk_size(tmp_path):
    texts, flags = make_rows(2000, seed=2)
    path = write_vdisc(tmp_path / "d.h5", texts, flags)
    want = {"CWE-119": 50, "CWE-120": 40, "CWE-469": 30, "CWE-476": 20, "CWE-other": 10}
    a = load_split(path, downsample=want, seed=7, chunk_rows=64)
    b = load_split(path, downsample=want, seed=7, chunk_rows=3)
    c = load_split(path, downsample=want, seed=8, chunk_rows=64)
    assert a.ids == b.ids and a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert a.ids != c.ids
    assert Counter(a.labels.tolist()) == {0: 50, 1: 40, 2: 30, 3: 20, 4: 10}
    assert [int(i) for i in a.ids] == sorted(int(i) for i in a.ids)  # source order kept
    full = load_split(path)
    by_id = dict(zip(full.ids, zip(full.texts, full.labels.tolist())))
    assert all(by_id[i] == (t, l) for i, t, l in zip(a.ids, a.texts, a.labels.tolist()))
    assert a.report.downsampled_away == len(full) - 150


def test_downsampling_keeps_all_of_a_short_class_and_says_so(tmp_path):
    texts, flags = make_rows(300, seed=3)
    path = write_vdisc(tmp_path / "s.h5", texts, flags)
    full = load_split(path)
    have = Counter(full.labels.tolist())[2]
    raw = load_split(path, downsample={"CWE-469": have + 100, "CWE-119": 5})
    counts = Counter(raw.labels.tolist())
    assert counts[2] == have and counts[0] == 5 and counts[1] == Counter(full.labels.tolist())[1]
    assert any("CWE-469" in note and "only" in note for note in raw.report.notes)
    assert "CWE-469" in raw.report.summary()


def test_paper_preset_counts_per_split(tmp_path):
    per_class = [1200, 1150, 60, 600, 1100]
    texts = [f"void g{i}(void) {{ }}" for i in range(sum(per_class) + 500)]
    flags = np.zeros((len(texts), 5), dtype=bool)
    start = 0
    for k, n in enumerate(per_class):
        flags[start:start + n, k] = True
        start += n
    path = write_vdisc(tmp_path / "paper.h5", texts, flags)
    raw = load_split(path, downsample="paper", split="validation", seed=1)
    assert raw.report.class_counts == dict(zip(CWES, [1142, 1099, 53, 535, 1071]))
    assert raw.split == "validation"
    short = load_split(path, downsample="paper", split="train")
    assert short.report.class_counts == dict(zip(CWES, per_class)) and len(short.report.notes) == 5
    with pytest.raises(enstack.ConfigError, match="split"):
        load_split(path, downsample="paper")
    with pytest.raises(enstack.ConfigError, match="paper"):
        load_split(path, downsample="paper", split="train", label_policy="binary")
    with pytest.raises(enstack.ConfigError, match="CWE-999"):
        load_split(path, downsample={"CWE-999": 3})


def test_missing_optional_readers_say_how_to_install_them(tmp_path, monkeypatch):
    texts, flags = make_rows(5)
    write_vdisc(tmp_path / "x.h5", texts, flags)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "h5py", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "fastparquet", None)
    with pytest.raises(enstack.DataError, match="pip install h5py"):
        load_split(tmp_path / "x.h5")
    with pytest.raises(enstack.DataError, match="pip install pandas pyarrow"):
        load_split(tmp_path / "x.parquet")


def write_csv(path: Path, header, rows):
    import csv

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_csv_class_column_names_sorted_or_given(tmp_path):
    rows = [[f"int f{i}(void) {{ return {i}; }}", ["CWE-476", "CWE-119", "CWE-120"][i % 3]] for i in range(9)]
    path = write_csv(tmp_path / "c.csv", ["code", "cwe"], rows)
    raw = load_split(path, text_column="code", label_columns=["cwe"])
    assert raw.label_names == ["CWE-119", "CWE-120", "CWE-476"]
    assert raw.labels.tolist() == [2, 0, 1] * 3 and raw.texts[4] == rows[4][0]
    given = load_split(path, text_column="code", label_columns="cwe", label_names=["CWE-476", "CWE-120", "CWE-119"])
    assert given.labels.tolist() == [0, 2, 1] * 3


def test_csv_integer_labels_with_names_are_indices(tmp_path):
    path = write_csv(tmp_path / "i.csv.gz", ["func", "y"], [["a()", 2], ["b()", 0], ["c()", 1], ["d()", 7]])
    raw = load_split(path, text_column="func", label_columns=["y"], label_names=["x", "y", "z"],
                     max_bad_share=0.5)
    assert raw.labels.tolist() == [2, 0, 1] and raw.ids == ["0", "1", "2"]
    assert raw.report.bad == {"unknown label": 1} and raw.report.bad_examples["unknown label"] == [3]
    plain = load_split(path, text_column="func", label_columns=["y"])
    assert plain.label_names == ["0", "1", "2", "7"] and plain.labels.tolist() == [2, 0, 1, 3]


def test_csv_flag_columns_follow_the_vdisc_policies_in_given_order(tmp_path):
    header = ["text", "overflow", "null", "fmt"]
    rows = [["f0()", 0, 0, 0], ["f1()", 1, 1, 0], ["f2()", 0, 1, 1], ["f3()", "true", 0, "0"], ["f4()", 0, 0, 1]]
    path = write_csv(tmp_path / "flags.csv", header, rows)
    kw = dict(text_column="text", label_columns=["null", "overflow", "fmt"])
    five = load_split(path, **kw)
    assert five.label_names == ["null", "overflow", "fmt"]
    assert five.ids == ["1", "2", "3", "4"] and five.labels.tolist() == [0, 0, 1, 2]
    assert load_split(path, label_policy="binary", **kw).labels.tolist() == [0, 1, 1, 1, 1]
    multi = load_split(path, label_policy="multilabel", **kw)
    assert multi.labels.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 1]]


def test_jsonl_gz_with_a_malformed_line_and_missing_keys(tmp_path):
    path = tmp_path / "j.jsonl.gz"
    lines = [json.dumps({"func": f"f{i}()", "cwe": "CWE-121", "id": f"h{i}"}) for i in range(200)]
    lines[10] = "{not json"
    lines[20] = json.dumps({"cwe": "CWE-121", "id": "h20"})
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n\n")
    raw = load_split(path, text_column="func", label_columns=["cwe"], id_column="id", max_bad_share=0.02)
    assert len(raw) == 198 and raw.ids[:3] == ["h0", "h1", "h2"] and "h10" not in raw.ids
    assert raw.report.bad == {"malformed row": 1, "missing text": 1}
    assert raw.report.bad_examples == {"malformed row": [10], "missing text": [20]}


def test_json_array_file_and_missing_column(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"func": "f()", "label": "x"}, {"func": "g()", "label": "y"}]))
    assert load_split(path, text_column="func", label_columns=["label"]).labels.tolist() == [0, 1]
    with pytest.raises(enstack.DataError, match="text_column") as info:
        load_split(path, text_column="code", label_columns=["label"])
    assert "'func'" in str(info.value)


def frame(n=30):
    pd = pytest.importorskip("pandas")
    texts, flags = make_rows(n, seed=4)
    df = pd.DataFrame({"functionSource": texts, **{c: flags[:, k] for k, c in enumerate(CWES)}})
    return df, flags


def test_parquet_matches_the_flags(tmp_path):
    pytest.importorskip("pyarrow")
    df, flags = frame()
    df.to_parquet(tmp_path / "f.parquet")
    raw = load_split(tmp_path / "f.parquet")
    rows, labels = expected(flags, "enstack5")
    assert raw.ids == [str(r) for r in rows] and raw.labels.tolist() == labels


def test_pickle_is_refused_unless_trusted(tmp_path):
    df, flags = frame()
    df.to_pickle(tmp_path / "old.pkl")
    with pytest.raises(enstack.DataError) as info:
        load_split(tmp_path / "old.pkl")
    message = str(info.value)
    assert "runs" in message and "trust_pickle=True" in message and "Parquet" in message
    raw = load_split(tmp_path / "old.pkl", trust_pickle=True, label_policy="binary")
    assert raw.labels.tolist() == expected(flags, "binary")[1]


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(enstack.DataError, match="nowhere.h5"):
        load_split(tmp_path / "nowhere.h5")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(enstack.DataError, match="extension"):
        load_split(tmp_path / "x.txt")
    (tmp_path / "x.parquet.gz").write_bytes(b"")
    with pytest.raises(enstack.DataError, match="gzip"):
        load_split(tmp_path / "x.parquet.gz")
    with pytest.raises(enstack.ConfigError, match="data.format"):
        load_split(tmp_path / "x.txt", format="xlsx")
    with pytest.raises(enstack.ConfigError, match="label_policy"):
        load_split(tmp_path / "x.txt", label_policy="five")


def bad_rows_file(tmp_path, n_good=195):
    pd = pytest.importorskip("pandas")
    good = [{"code": f"int f{i};", "y": "a" if i % 2 else "b"} for i in range(n_good)]
    bad = [{"code": "", "y": "a"}, {"code": "   \n", "y": "b"}, {"code": None, "y": "a"},
           {"code": 42, "y": "a"}, {"code": "int z;", "y": None}]
    df = pd.DataFrame(good[:100] + bad + good[100:], dtype=object)
    df.to_pickle(tmp_path / "bad.pkl")
    return tmp_path / "bad.pkl"


def test_bad_rows_are_counted_by_reason(tmp_path):
    path = bad_rows_file(tmp_path)
    raw = load_split(path, text_column="code", label_columns=["y"], trust_pickle=True, max_bad_share=0.05)
    report = raw.report
    assert isinstance(report, IngestReport) and isinstance(raw, RawSplit)
    assert report.rows_read == 200 and report.rows_kept == 195 and len(raw) == 195
    assert report.bad == {"empty text": 2, "missing text": 1, "wrong type": 1, "missing label": 1}
    assert report.bad_examples["empty text"] == [100, 101]
    assert "empty text 2" in report.summary() and "kept 195" in report.summary()


def test_too_many_bad_rows_refuse_the_file_with_counts_reasons_and_the_key(tmp_path):
    path = bad_rows_file(tmp_path)
    with pytest.raises(enstack.DataError) as info:
        load_split(path, text_column="code", label_columns=["y"], trust_pickle=True)
    message = str(info.value)
    for part in ("5 of 200", "2.50%", "empty text 2", "missing text 1", "wrong type 1",
                 "max_bad_share", "data.text_column"):
        assert part in message
    with pytest.raises(enstack.DataError, match="unknown label"):
        load_split(path, text_column="code", label_columns=["y"], label_names=["a"], trust_pickle=True)


def check_split(raw, parts, ratios):
    all_ids = [i for p in parts.values() for i in p.ids]
    assert sorted(all_ids) == sorted(raw.ids) and len(set(all_ids)) == len(all_ids)  # complete, disjoint
    for name, part in parts.items():
        assert part.split == name and part.label_names == raw.label_names
        by_id = dict(zip(raw.ids, raw.texts))
        assert all(by_id[i] == t for i, t in zip(part.ids, part.texts))
    return all_ids


def test_stratified_split_properties(tmp_path):
    texts, flags = make_rows(1500, seed=5)
    raw = load_split(write_vdisc(tmp_path / "s.h5", texts, flags))
    ratios = (0.8, 0.1, 0.1)
    parts = split_stratified(raw, ratios, seed=3)
    assert list(parts) == ["train", "validation", "test"]
    check_split(raw, parts, ratios)
    totals = Counter(raw.labels.tolist())
    for share, part in zip(ratios, parts.values()):
        for c, n in Counter(part.labels.tolist()).items():
            assert abs(n - share * totals[c]) <= 1
    again = split_stratified(raw, ratios, seed=3)
    other = split_stratified(raw, ratios, seed=4)
    assert all(again[k].ids == parts[k].ids for k in parts)
    assert other["test"].ids != parts["test"].ids
    with pytest.raises(enstack.ConfigError, match="ratios"):
        split_stratified(raw, (0.5, 0.6))


@pytest.mark.parametrize("how", ["priority", "bitmask"])
def test_multilabel_split_is_stratified(tmp_path, how):
    texts, flags = make_rows(800, seed=6)
    raw = load_split(write_vdisc(tmp_path / "m.h5", texts, flags), label_policy="multilabel")
    parts = split_stratified(raw, {"train": 0.75, "test": 0.25}, seed=0, multilabel_strata=how)
    check_split(raw, parts, None)
    key = (lambda m: m.argmax(1) + 5 * (m.sum(1) == 0)) if how == "priority" else (lambda m: m @ (1 << np.arange(5)))
    totals = Counter(key(raw.labels).tolist())
    for share, part in zip((0.75, 0.25), parts.values()):
        for c, n in Counter(key(part.labels).tolist()).items():
            assert abs(n - share * totals[c]) <= 1


def test_group_split_keeps_groups_whole(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for g in range(300):
        cls = ["A", "B", "C"][g % 3]
        for j in range(int(rng.integers(1, 8))):
            lines.append(json.dumps({"func": f"f{g}_{j}()", "cwe": cls, "source": f"case{g:03d}"}))
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(lines))
    raw = load_split(path, text_column="func", label_columns=["cwe"], group_column="source")
    parts = split_stratified(raw, seed=1)
    check_split(raw, parts, None)
    owner = {}
    for name, part in parts.items():
        for g in part.groups:
            assert owner.setdefault(g, name) == name
    assert abs(len(parts["train"]) / len(raw) - 0.8) < 0.05 and len(parts["test"]) > 0
    assert all(split_stratified(raw, seed=1)[k].ids == parts[k].ids for k in parts)


def test_juliet_file_loads_and_splits_by_test_case():
    if not JULIET.exists():
        pytest.skip(f"the Juliet extract is not at {JULIET} (it lives outside the repository, in ../shared)")
    raw = load_split(JULIET, text_column="func", label_columns=["cwe"], id_column="id", group_column="source")
    assert len(raw) == 36654 and raw.report.bad_rows == 0
    assert raw.label_names == ["CWE-121", "CWE-122", "CWE-190", "CWE-191", "CWE-415", "CWE-416"]
    assert raw.report.class_counts["CWE-416"] == 428 + 1421
    parts = split_stratified(raw, seed=0)
    groups = [set(p.groups) for p in parts.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(p) for p in parts.values()) == 36654
    assert abs(len(parts["test"]) / 36654 - 0.1) < 0.01
