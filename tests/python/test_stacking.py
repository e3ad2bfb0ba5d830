"""EnStack stacking: the results table against scikit-learn, no leakage in the oof protocol,
determinism, bad input, safe meta-model persistence, and one end-to-end run with real
tiny base models (paper and oof protocols, CLI)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score
from sklearn.model_selection import cross_val_score

import enstack
from enstack.stacking import (FoldOutputs, Pool, PredictionSet, from_predictions, load_meta_model,
                              load_stack_config, out_of_fold, run_table)
from enstack.stacking import predictions as P

NAMES = ["CWE-119", "CWE-120", "CWE-476"]
SKILL = {"alpha": 1.0, "beta": 1.6, "gamma": 0.4}


def labels_for(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % len(NAMES))


def softmax_probs(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """A base model's class probabilities: noise plus ``skill`` on the true class."""
    logits = np.random.default_rng(seed).normal(size=(len(labels), len(NAMES)))
    logits[np.arange(len(labels)), labels] += skill
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def pset(split, labels, probs, model, data_key=None, ids=None, names=NAMES) -> PredictionSet:
    ids = ids if ids is not None else [f"{split}-{i}" for i in range(len(labels))]
    return PredictionSet(split=split, ids=list(ids), labels=np.asarray(labels, dtype=np.int64), label_names=list(names),
                         outputs={"probabilities": probs}, data_key=data_key or f"key-{split}", model=model,
                         checkpoint={"kind": "best", "step": 7, "model_fnv1a64": "00", "model_size": 1})


def synthetic_sets(models=("alpha", "beta", "gamma"), n_val=150, n_test=120):
    y_val, y_test = labels_for(n_val, 1), labels_for(n_test, 2)
    val = {m: pset("validation", y_val, softmax_probs(y_val, SKILL[m], 10 + i), m) for i, m in enumerate(models)}
    test = {m: pset("test", y_test, softmax_probs(y_test, SKILL[m], 20 + i), m) for i, m in enumerate(models)}
    return val, test


def sklearn_metrics(y, p):
    pred = p.argmax(axis=1)
    out = {"accuracy": accuracy_score(y, pred)}
    for avg in ("weighted", "macro"):
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        out.update({f"precision_{avg}": prec, f"recall_{avg}": rec, f"f1_{avg}": f1})
        out[f"auc_{avg}"] = roc_auc_score(y, p, multi_class="ovr", average=avg)
    return out


def write_and_read(root: Path, val, test):
    """The prediction sets through their files, as a stacking run reads them."""
    for m in val:
        P.save(val[m], root / "predictions" / m)
        P.save(test[m], root / "predictions" / m)
    return ({m: P.load(root / "predictions" / m, "validation", model=m) for m in val},
            {m: P.load(root / "predictions" / m, "test", model=m) for m in val})


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The table of 3 base models x 2 fast meta-classifiers, from prediction files on disk."""
    root = tmp_path_factory.mktemp("stack")
    ds = from_predictions(*write_and_read(root, *synthetic_sets()))
    report = run_table(ds, root / "out", meta_classifiers=["lr", "svm"], seed=3, checkpoint="best", plots=True)
    return root, ds, report


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Every meta-classifier of the paper over 2 base models (rf and xgboost are the slow ones)."""
    root = tmp_path_factory.mktemp("four")
    ds = from_predictions(*write_and_read(root, *synthetic_sets(("alpha", "beta"), 90, 60)))
    report = run_table(ds, root / "out", seed=3, checkpoint="best", plots=False)
    return root, ds, report


# ---------------------------------------------------------------- the table


def test_table_metrics_equal_sklearn_computed_from_the_saved_predictions(table):
    root, ds, report = table
    saved = json.loads((root / "out" / "results.json").read_text())
    preds = np.load(root / "out" / "test_predictions.npz", allow_pickle=False)
    index = json.loads((root / "out" / "test_predictions.json").read_text())
    y = preds["labels"]
    assert index["ids"] == [f"test-{i}" for i in range(120)]
    # every model alone, and every non-empty subset (3 singles, 3 pairs, the triple) x every meta-classifier
    assert len(saved["rows"]) == 3 + 7 * 2
    subsets = {tuple(r["models"]) for r in saved["rows"] if r["kind"] == "stack"}
    assert subsets == {("alpha",), ("beta",), ("gamma",), ("alpha", "beta"), ("alpha", "gamma"), ("beta", "gamma"),
                       ("alpha", "beta", "gamma")}
    for row in saved["rows"]:
        p = preds[row["key"]]
        for name, value in sklearn_metrics(y, p).items():
            assert row[name] == pytest.approx(value, abs=1e-12), (row["key"], name)
    for m in ("alpha", "beta", "gamma"):  # a base model alone is scored on its own prediction file
        own = np.load(root / "predictions" / m / "test.probabilities.npy", allow_pickle=False)
        np.testing.assert_array_equal(preds[f"{m}:base"], own.astype(np.float64))
    stacked = [r for r in saved["rows"] if r["kind"] == "stack"]
    best = max(stacked, key=lambda r: r["f1_weighted"])
    assert saved["best"] == best["key"] and [r["key"] for r in saved["rows"] if r["best"]] == [best["key"]]
    # CSV and Markdown say the same
    csv_lines = (root / "out" / "results.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    first = dict(zip(header, csv_lines[1].split(",")))
    assert float(first["accuracy"]) == saved["rows"][0]["accuracy"] and first["key"] == "alpha:base"
    md = (root / "out" / "results.md").read_text()
    assert f"| **{' + '.join(best['models'])}** | **{best['meta']}** | **{100 * best['accuracy']:.2f}** |" in md
    for png in ("confusion-best.png", "roc-best.png", "roc-compare.png", "confusion-beta-base.png"):
        assert (root / "out" / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stacking_the_models_beats_the_best_model_alone_on_independent_signals(table):
    # The three synthetic models' errors are independent, so combining them must help (a sanity
    # check that features are wired to the right rows: misaligned rows would score at chance).
    _, _, report = table
    alone = max(r["accuracy"] for r in report.rows if r["kind"] == "base")
    triple_lr = report.row("alpha+beta+gamma:lr")["accuracy"]
    assert triple_lr > alone


def test_same_inputs_and_seeds_give_the_same_table(four, tmp_path):
    root, ds, report = four
    assert [r["key"] for r in report.rows] == ["alpha:base", "beta:base"] + [
        f"{c}:{m}" for c in ("alpha", "beta", "alpha+beta") for m in ("lr", "svm", "rf", "xgboost")]
    again = run_table(ds, tmp_path / "again", seed=3, checkpoint="best", plots=False)
    for name in ("results.json", "results.csv", "results.md"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "out" / name).read_bytes(), name
    a = np.load(root / "out" / "test_predictions.npz")
    b = np.load(tmp_path / "again" / "test_predictions.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
    for name, value in sklearn_metrics(a["labels"], a["alpha+beta:xgboost"]).items():
        assert report.row("alpha+beta:xgboost")[name] == pytest.approx(value, abs=1e-12)
    # the seed reaches the meta-classifiers: SVM's Platt scaling cross-validates with it
    x, names = ds.features("train", ["alpha", "beta"], "probabilities")
    fit = lambda seed: enstack.stacking.fit_meta("svm", x, ds.train.labels, ["alpha", "beta"], "probabilities",  # noqa: E731
                                                 NAMES, names, seed).predict_proba(x)
    assert not np.array_equal(fit(3), fit(4))


# ---------------------------------------------------------------- meta-models


@pytest.mark.parametrize("meta", ["lr", "svm", "rf", "xgboost"])
def test_meta_model_round_trip_is_identical_and_contains_no_pickle(four, meta):
    root, ds, _ = four
    directory = root / "out" / "meta" / "alpha+beta" / meta
    model = load_meta_model(directory)
    x_test, _ = ds.features("test", ["alpha", "beta"], "probabilities")
    saved = np.load(root / "out" / "test_predictions.npz")[f"alpha+beta:{meta}"]
    np.testing.assert_array_equal(model.predict_proba(x_test), saved)
    outputs = {m: {"probabilities": ds.test.outputs[m]["probabilities"]} for m in ("alpha", "beta")}
    np.testing.assert_array_equal(enstack.stacking.predict_proba(directory, outputs), saved)
    assert model.models == ["alpha", "beta"] and model.label_names == NAMES
    for f in directory.iterdir():
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f  # pickle protocol 2+ opens with PROTO
        if f.suffix == ".json":
            json.loads(data)
        elif zipfile.is_zipfile(f):  # skops: a zip of JSON and .npy arrays
            with zipfile.ZipFile(f) as z:
                for name in z.namelist():
                    member = z.read(name)
                    assert not member.startswith(b"\x80"), name
                    if name.endswith(".npy"):
                        np.lib.format.read_array(__import__("io").BytesIO(member), allow_pickle=False)
                    else:
                        json.loads(member)
        else:
            pytest.fail(f"unexpected file {f}")


def test_tampered_or_untrusted_meta_models_are_refused(table, tmp_path):
    import os
    import shutil

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    root, _, _ = table
    good = root / "out" / "meta" / "alpha" / "lr"
    bad = tmp_path / "lr"
    shutil.copytree(good, bad)
    skops.io.dump(FunctionTransformer(func=os.system), str(bad / "model.skops"))
    with pytest.raises(enstack.CheckpointError, match="checksum"):
        load_meta_model(bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["sha256"] = __import__("hashlib").sha256((bad / "model.skops").read_bytes()).hexdigest()
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(enstack.CheckpointError, match="posix.system"):
        load_meta_model(bad)
    with pytest.raises(enstack.CheckpointError, match="not a saved meta-model"):
        load_meta_model(tmp_path / "nothing")
    model = load_meta_model(good)
    with pytest.raises(enstack.DataError, match="takes 3 features"):
        model.predict_proba(np.zeros((2, 6)))


# ---------------------------------------------------------------- leakage


class Memoriser:
    """Base models with known behaviour, for the protocols: ``memo`` predicts its training rows
    perfectly and everything else at random; ``honest`` is equally good on every row."""

    def __init__(self, pool: Pool, test: Pool, seed: int = 0):
        self.pool, self.test, self.calls = pool, test, []
        rng = np.random.default_rng(seed)
        self.random_pool = rng.dirichlet(np.ones(len(NAMES)), size=len(pool.ids))
        self.random_test = rng.dirichlet(np.ones(len(NAMES)), size=len(test.ids))
        self.honest_pool = softmax_probs(pool.labels, 1.2, seed + 1).astype(np.float64)
        self.honest_test = softmax_probs(test.labels, 1.2, seed + 2).astype(np.float64)

    def predict(self, model, train_rows, rows):
        if model == "honest":
            return self.honest_pool[rows]
        out = self.random_pool[rows].copy()
        seen = np.isin(rows, train_rows)
        out[seen] = np.eye(len(NAMES))[self.pool.labels[rows[seen]]]
        return out

    def __call__(self, task):
        self.calls.append(task)
        test = self.honest_test if task.model == "honest" else self.random_test
        return FoldOutputs(heldout={"probabilities": self.predict(task.model, task.train_rows, task.heldout_rows)},
                           test={"probabilities": test})


def test_oof_shows_no_inflated_scores_where_an_in_sample_protocol_does():
    n, n_test = 600, 300
    pool = Pool(ids=[f"p{i}" for i in range(n)], labels=labels_for(n, 5), label_names=NAMES)
    test = Pool(ids=[f"t{i}" for i in range(n_test)], labels=labels_for(n_test, 6), label_names=NAMES)
    fitter = Memoriser(pool, test)
    models = ["memo", "honest"]
    ds = out_of_fold(models, pool, test, folds=5, seed=0, fit_base=fitter)
    # Every fold model predicts only rows it never trained on, and the folds cover the pool once.
    assert len(fitter.calls) == 10
    for model in models:
        held = [t.heldout_rows for t in fitter.calls if t.model == model]
        assert sorted(np.concatenate(held).tolist()) == list(range(n))
        for t in fitter.calls:
            assert not np.intersect1d(t.train_rows, t.heldout_rows).size
            assert len(t.train_rows) + len(t.heldout_rows) == n

    def scores(x_train, x_test):
        meta = LogisticRegression(max_iter=500)
        estimate = cross_val_score(meta, x_train, pool.labels, cv=5).mean()  # what the meta data promises
        return estimate, meta.fit(x_train, pool.labels).score(x_test, test.labels)

    honest_alone = accuracy_score(test.labels, fitter.honest_test.argmax(axis=1))
    oof_estimate, oof_test = scores(ds.features("train", models, "probabilities")[0],
                                    ds.features("test", models, "probabilities")[0])
    # The naive protocol: base models fitted on the whole pool predict the pool itself.
    everything = np.arange(n)
    naive_train = np.hstack([fitter.predict(m, everything, everything) for m in models])
    naive_estimate, naive_test = scores(naive_train, ds.features("test", models, "probabilities")[0])

    assert naive_estimate > 0.98                     # in-sample: the memoriser looks perfect ...
    assert naive_test < honest_alone - 0.15          # ... the meta-classifier trusts it, and fails on test
    assert abs(oof_estimate - oof_test) < 0.07       # oof: what the meta data promises is what test gives
    assert oof_test > honest_alone - 0.05            # and the meta-classifier learnt to use the honest model
    report = run_table(ds, Path(__import__("tempfile").mkdtemp()), meta_classifiers=["lr"], plots=False)
    assert report.row("memo+honest:lr")["accuracy"] > honest_alone - 0.05
    assert report.row("memo:lr")["accuracy"] < 0.45  # the memoriser's held-out predictions carry nothing


def test_oof_rejects_fold_outputs_of_the_wrong_shape():
    pool = Pool(ids=[f"p{i}" for i in range(30)], labels=labels_for(30, 1), label_names=NAMES)
    test = Pool(ids=[f"t{i}" for i in range(9)], labels=labels_for(9, 2), label_names=NAMES)
    short = lambda task: FoldOutputs(heldout={"probabilities": np.zeros((len(task.heldout_rows) - 1, 3))},  # noqa: E731
                                     test={"probabilities": np.zeros((9, 3))})
    with pytest.raises(enstack.DataError, match="expected"):
        out_of_fold(["a"], pool, test, folds=3, seed=0, fit_base=short)
    overlap = Pool(ids=["p0", *test.ids[1:]], labels=test.labels, label_names=NAMES)
    with pytest.raises(enstack.DataError, match="share example ids"):
        out_of_fold(["a"], pool, overlap, folds=3, seed=0, fit_base=short)
    with pytest.raises(enstack.DataError, match="cannot be cut into 40 folds"):
        out_of_fold(["a"], pool, test, folds=40, seed=0, fit_base=short)


# ---------------------------------------------------------------- bad input


def test_predictions_from_different_datasets_or_label_sets_are_refused():
    val, test = synthetic_sets(("alpha", "beta"), 30, 20)
    other = dict(val, beta=pset("validation", val["beta"].labels, val["beta"].probabilities, "beta", data_key="other"))
    with pytest.raises(enstack.DataError, match="different datasets"):
        from_predictions(other, test)
    renamed = dict(test, beta=pset("test", test["beta"].labels, test["beta"].probabilities, "beta",
                                   names=["CWE-119", "CWE-120", "CWE-469"]))
    with pytest.raises(enstack.DataError, match="label sets differ"):
        from_predictions(val, renamed)
    flipped = val["beta"].labels.copy()
    flipped[4] = (flipped[4] + 1) % 3
    relabelled = dict(val, beta=pset("validation", flipped, val["beta"].probabilities, "beta"))
    with pytest.raises(enstack.DataError, match="labels of 'beta' and 'alpha' differ.*validation-4"):
        from_predictions(relabelled, test)
    with pytest.raises(enstack.DataError, match="share example ids"):
        from_predictions(val, {m: pset("test", val[m].labels, val[m].probabilities, m, data_key="t",
                                       ids=val[m].ids) for m in val})


def test_missing_splits_and_mismatched_ids_are_refused_and_reordered_ids_aligned(tmp_path):
    val, test = synthetic_sets(("alpha", "beta"), 30, 20)
    with pytest.raises(enstack.DataError, match="missing for \\['beta'\\]"):
        from_predictions(val, {"alpha": test["alpha"]})
    P.save(val["alpha"], tmp_path / "alpha")
    with pytest.raises(enstack.DataError, match="no test predictions.*validation"):
        P.load(tmp_path / "alpha", "test")
    with pytest.raises(enstack.DataError, match="has no logits"):
        P.load(tmp_path / "alpha", "validation", outputs=("logits",))
    renamed = [f"x{i}" for i in range(30)]
    with pytest.raises(enstack.DataError, match="not of the same examples"):
        from_predictions(dict(val, beta=pset("validation", val["beta"].labels, val["beta"].probabilities, "beta",
                                             ids=renamed)), test)
    with pytest.raises(enstack.DataError, match="not of the same examples"):
        from_predictions(dict(val, beta=pset("validation", val["beta"].labels[:29], val["beta"].probabilities[:29],
                                             "beta", ids=val["beta"].ids[:29])), test)
    # the same rows in another order are aligned by id
    perm = np.random.default_rng(0).permutation(30)
    b = val["beta"]
    shuffled = pset("validation", b.labels[perm], b.probabilities[perm], "beta", ids=[b.ids[i] for i in perm])
    ds = from_predictions(dict(val, beta=shuffled), test)
    np.testing.assert_array_equal(ds.train.outputs["beta"]["probabilities"], b.probabilities)
    with pytest.raises(enstack.DataError, match="not unique"):
        pset("validation", [0, 1], np.full((2, 3), 1 / 3, np.float32), "a", ids=["same", "same"]).validate()


def test_corrupted_or_foreign_prediction_files_are_refused(tmp_path):
    val, _ = synthetic_sets(("alpha",), 20, 10)
    P.save(val["alpha"], tmp_path)
    arr = np.load(tmp_path / "validation.probabilities.npy")
    arr[0, 0] += 0.5
    np.save(tmp_path / "validation.probabilities.npy", arr)
    with pytest.raises(enstack.DataError, match="checksum"):
        P.load(tmp_path, "validation")
    (tmp_path / "test.json").write_text('{"format": "something-else"}')
    with pytest.raises(enstack.DataError, match="not an enstack prediction index"):
        P.load(tmp_path, "test")
    with pytest.raises(enstack.DataError, match="shape"):
        pset("validation", [0, 1, 2], np.zeros((3, 2), np.float32), "a").validate()


def test_stacking_config_errors_list_what_to_fix(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"include: {Path('configs/demo.yaml').absolute()}\nrun: {{output_dir: never-trained}}\n"
                    f"model: {{name_or_path: {Path('configs/models/tiny-roberta.json').absolute()}}}\n")
    good = "run: {output_dir: out}\nstack:\n  base_models: {a: base.yaml}\n"
    (tmp_path / "s.yaml").write_text(good)
    cfg = load_stack_config(tmp_path / "s.yaml")
    assert cfg.stack.base_models == {"a": str(base)} and cfg.run.output_dir == str(tmp_path / "out")
    assert cfg.stack.resolved_checkpoint() == "best"
    assert load_stack_config(tmp_path / "s.yaml", ["stack.protocol=oof"]).stack.resolved_checkpoint() == "final"
    assert cfg.base_configs()["a"].run.name == "demo"
    (tmp_path / "bad.yaml").write_text(
        "stack:\n  base_models: {a: missing.yaml, 'b c': base.yaml}\n  meta_classifiers: [lr, knn]\n"
        "  protocol: oof\n  checkpoint: best\n  folds: 1\n")
    with pytest.raises(enstack.ConfigError) as e:
        load_stack_config(tmp_path / "bad.yaml")
    for text in ("stack.base_models.a: config file", "stack.base_models.b c: a name", "stack.meta_classifiers",
                 "'knn'", "stack.folds", "leaks"):
        assert text in str(e.value), text
    with pytest.raises(enstack.ConfigError, match="no stack section"):
        load_stack_config(base)
    with pytest.raises(enstack.CheckpointError, match="no 'best' checkpoint at .*train the model first"):
        enstack.stack(tmp_path / "s.yaml", {"stack.train_base_models": False}, progress=False)
    with pytest.raises(enstack.CheckpointError, match="no complete training checkpoint"):
        enstack.stack(tmp_path / "s.yaml", ["stack.train_base_models=false", "stack.protocol=paper",
                                            "stack.checkpoint=final"], progress=False)
    with pytest.raises(enstack.ConfigError, match="stack.base_models: required"):
        enstack.stacking.StackConfig.from_dict({"stack": {}})


# ---------------------------------------------------------------- end to end


TINY = {"model_type": "roberta", "vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 130, "type_vocab_size": 1,
        "pad_token_id": 1, "layer_norm_eps": 1e-5, "initializer_range": 0.02}


def _write_base_configs(root: Path):
    from enstack.data import synthetic

    synthetic.write_jsonl(root / "functions.jsonl", 240, seed=1)
    (root / "tiny.json").write_text(json.dumps(TINY))
    common = (f"include: {Path('configs/demo.yaml').absolute()}\n"
              f"data: {{train: functions.jsonl, text_column: func, label_columns: [label], label_policy: class,"
              f" id_column: id}}\n")
    for name, lr, vocab, swa in (("a", 1.0e-3, 400, "false"), ("b", 2.0e-3, 450, "true")):
        (root / f"{name}.yaml").write_text(
            common + f"run: {{name: {name}, output_dir: runs/{name}, num_threads: 1}}\n"
            f"model: {{name_or_path: tiny.json, max_length: 64, tokenizer: {{kind: sentencepiece, vocab_size: {vocab}}}}}\n"
            f"train: {{epochs: 1, batch_size: 8, eval_steps: 12, save_steps: 12, logging_steps: 12, learning_rate: {lr},"
            f" swa: {{enabled: {swa}}}}}\n")
    (root / "stack.yaml").write_text(
        "run: {name: s, output_dir: runs/stack, num_threads: 1}\n"
        "stack: {base_models: {a: a.yaml, b: b.yaml}, meta_classifiers: [lr, xgboost], plots: false}\n")


@pytest.mark.slow
def test_end_to_end_with_real_base_models_paper_then_oof(tmp_path, capsys):
    from enstack import cli

    _write_base_configs(tmp_path)
    # paper protocol through the CLI: trains both base models, predicts, stacks, prints the table
    assert cli.main(["stack", str(tmp_path / "stack.yaml"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| a + b | lr |" in printed and "best stack by f1_weighted" in printed
    saved = json.loads((tmp_path / "runs" / "stack" / "results.json").read_text())
    preds = np.load(tmp_path / "runs" / "stack" / "test_predictions.npz")
    for name in ("a", "b"):
        pred_dir = tmp_path / "runs" / name / "predictions" / "best"
        index = json.loads((pred_dir / "test.json").read_text())
        store = json.loads((tmp_path / "runs" / name / "data" / "test.json").read_text())
        assert index["ids"] == store["ids"] and index["store_fingerprint"] == store["fingerprint"]
        manifest = json.loads((tmp_path / "runs" / name / "checkpoints" / "best" / "MANIFEST.json").read_text())
        assert index["checkpoint"]["step"] == manifest["step"]
        own = np.load(pred_dir / "test.probabilities.npy", allow_pickle=False)
        np.testing.assert_allclose(own.sum(axis=1), 1, atol=1e-5)
        row = next(r for r in saved["rows"] if r["key"] == f"{name}:base")
        assert row["accuracy"] == accuracy_score(index["labels"], own.argmax(axis=1))
        np.testing.assert_array_equal(preds[f"{name}:base"], own.astype(np.float64))
    assert len(saved["rows"]) == 2 + 3 * 2
    assert (tmp_path / "runs" / "a" / "metrics" / "training-curves.png").is_file()  # trained here: plots drawn
    meta = load_meta_model(tmp_path / "runs" / "stack" / "meta" / "a+b" / "xgboost")
    assert meta.info["base_checkpoints"]["a"][0]["kind"] == "best"

    # fresh predictions are reused; predictions of other weights are noticed and redone
    cfg = load_stack_config(tmp_path / "stack.yaml")
    trainer = enstack.Trainer(cfg.base_configs()["a"])
    pred_dir = tmp_path / "runs" / "a" / "predictions" / "best"
    before = (pred_dir / "test.probabilities.npy").stat().st_mtime_ns
    again = trainer.write_predictions(["test"])["test"]
    assert (pred_dir / "test.probabilities.npy").stat().st_mtime_ns == before
    index = json.loads((pred_dir / "test.json").read_text())
    index["checkpoint"]["step"] += 1  # as if the model had been trained further
    (pred_dir / "test.json").write_text(json.dumps(index))
    redone = trainer.write_predictions(["test"])["test"]
    assert json.loads((pred_dir / "test.json").read_text())["checkpoint"]["step"] == index["checkpoint"]["step"] - 1
    np.testing.assert_array_equal(redone.probabilities, again.probabilities)
    with_logits = trainer.write_predictions(["test"], logits=True)["test"]  # files without logits are redone
    logits = np.load(pred_dir / "test.logits.npy", allow_pickle=False)
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(soft / soft.sum(axis=1, keepdims=True), with_logits.probabilities, atol=1e-5)

    # the SWA average predicts when asked for; a run without one says how to get it
    swa = enstack.Trainer(cfg.base_configs()["b"]).write_predictions(["test"], checkpoint="swa")["test"]
    manifest = json.loads((tmp_path / "runs" / "b" / "checkpoints" / "swa" / "MANIFEST.json").read_text())
    assert swa.checkpoint["kind"] == "swa" and swa.checkpoint["step"] == manifest["step"]
    assert (tmp_path / "runs" / "b" / "predictions" / "swa" / "test.json").is_file()
    with pytest.raises(enstack.CheckpointError, match="swa.enabled"):
        trainer.write_predictions(["test"], checkpoint="swa")

    # oof: fold models on K-1 folds of train+validation, never predicting their own training rows
    report = enstack.stack(tmp_path / "stack.yaml", {"stack.protocol": "oof", "stack.folds": 2, "stack.features": "both",
                                                      "run.output_dir": str(tmp_path / "runs" / "oof")}, progress=False)
    assert report.protocol == "oof" and report.checkpoint == "final"
    meta = load_meta_model(tmp_path / "runs" / "oof" / "meta" / "a+b" / "lr")
    assert len(meta.feature_names) == 2 * 2 * 5 and meta.features == "both"
    assert [c["fold"] for c in meta.info["base_checkpoints"]["b"]] == [0, 1]
    for name in ("a", "b"):
        pool = []
        for fold in range(2):
            data = tmp_path / "runs" / "oof" / "oof" / name / f"fold-{fold}" / "data"
            train_ids = set(json.loads((data / "train.json").read_text())["ids"])
            held_ids = json.loads((data / "heldout.json").read_text())["ids"]
            assert not train_ids & set(held_ids)
            pool += held_ids
        stores = [json.loads((tmp_path / "runs" / name / "data" / f"{s}.json").read_text())["ids"]
                  for s in ("train", "validation")]
        assert sorted(pool) == sorted(stores[0] + stores[1])
    assert len(report.best_row["models"]) >= 1 and report.rows[0]["count"] == len(preds["labels"])


def test_compute_metrics_takes_probabilities_then_labels_like_the_native_one():
    from enstack._C.train import compute_metrics as native
    from enstack.stacking import compute_metrics

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, size=40)
    ours = compute_metrics(probs, labels)
    theirs = native(torch_tensor(probs), torch_tensor(labels))
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"]) and ours["count"] == 40
    with pytest.warns(DeprecationWarning, match="probabilities, labels"):
        assert compute_metrics(labels, probs) == ours  # the earlier order still works


def torch_tensor(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def test_final_is_the_one_word_for_the_newest_full_checkpoint_and_last_means_the_same(tmp_path):
    from enstack.trainer import CHECKPOINT_CHOICES, checkpoint_choice

    assert CHECKPOINT_CHOICES == P.CHECKPOINTS == ("best", "final", "swa")
    assert checkpoint_choice("last") == "final" and checkpoint_choice("best") == "best"
    base = tmp_path / "base.yaml"
    base.write_text(f"include: {Path('configs/demo.yaml').absolute()}\nrun: {{output_dir: never-trained}}\n"
                    f"model: {{name_or_path: {Path('configs/models/tiny-roberta.json').absolute()}}}\n")
    (tmp_path / "s.yaml").write_text("stack:\n  base_models: {a: base.yaml}\n  protocol: oof\n  checkpoint: last\n")
    assert load_stack_config(tmp_path / "s.yaml").stack.resolved_checkpoint() == "final"
    cfg = enstack.load_config(base)
    with pytest.raises(enstack.CheckpointError, match="no complete training checkpoint"):
        P.checkpoint_dir(cfg, "last")
