"""C++ metrics against scikit-learn and C++ learning-rate schedules against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from enstack._C import DataError
from enstack._C.train import compute_metrics, lr_multiplier, warmup_steps_for


def _random_predictions(n, k, seed, skew=0.0):
    g = np.random.default_rng(seed)
    labels = g.integers(0, k, n)
    logits = g.normal(size=(n, k))
    logits[np.arange(n), labels] += skew  # better than chance when skew > 0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("n, k, seed, skew", [(500, 5, 0, 1.0), (333, 2, 1, 0.5), (1000, 7, 2, 0.0),
                                              (40, 5, 3, 3.0)])
def test_metrics_equal_scikit_learn(n, k, seed, skew):
    probs, labels = _random_predictions(n, k, seed, skew)
    m = compute_metrics(torch.from_numpy(probs), torch.from_numpy(labels))
    pred = probs.argmax(1)
    tol = dict(rel=0, abs=1e-9)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), **tol)
    for avg in ("macro", "weighted"):
        assert m[f"precision_{avg}"] == pytest.approx(
            skm.precision_score(labels, pred, average=avg, zero_division=0), **tol)
        assert m[f"recall_{avg}"] == pytest.approx(skm.recall_score(labels, pred, average=avg, zero_division=0), **tol)
        assert m[f"f1_{avg}"] == pytest.approx(skm.f1_score(labels, pred, average=avg, zero_division=0), **tol)
    assert m["f1_micro"] == pytest.approx(skm.f1_score(labels, pred, average="micro"), **tol)
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(labels, pred), **tol)
    per_f1 = skm.f1_score(labels, pred, average=None, zero_division=0)
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(per_f1, **tol)
    assert m["confusion"] == skm.confusion_matrix(labels, pred, labels=range(k)).tolist()
    if k == 2:
        auc = skm.roc_auc_score(labels, probs[:, 1])
        assert m["auc_macro"] == pytest.approx(auc, **tol) and m["auc_weighted"] == pytest.approx(auc, **tol)
    else:
        for avg in ("macro", "weighted"):
            assert m[f"auc_{avg}"] == pytest.approx(
                skm.roc_auc_score(labels, probs, multi_class="ovr", average=avg), **tol)
    rows = np.array(m["confusion_percent"])
    assert np.allclose(rows.sum(1)[np.array(m["confusion"]).sum(1) > 0], 100.0)


def test_auc_with_tied_scores_matches_scikit_learn():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    p1 = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.5, 0.2, 0.9], dtype=np.float32)
    probs = np.stack([1 - p1, p1], 1)
    m = compute_metrics(torch.from_numpy(probs), torch.from_numpy(labels))
    assert m["auc_macro"] == pytest.approx(skm.roc_auc_score(labels, p1), abs=1e-9)


def test_labels_out_of_range_are_data_errors():
    with pytest.raises(DataError, match="outside"):
        compute_metrics(torch.rand(3, 2), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("name, factory", [
    ("linear", lambda opt, w, t: get_linear_schedule_with_warmup(opt, w, t)),
    ("cosine", lambda opt, w, t: get_cosine_schedule_with_warmup(opt, w, t)),
    ("constant", lambda opt, w, t: get_constant_schedule_with_warmup(opt, w)),
])
@pytest.mark.parametrize("warmup, total", [(0, 50), (7, 100), (10, 10), (3, 1)])
def test_schedules_equal_transformers_at_every_step(name, factory, warmup, total):
    base_lr = 2e-5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = factory(opt, warmup, total)
    for step in range(total + 3):
        assert base_lr * lr_multiplier(name, step, warmup, total) == opt.param_groups[0]["lr"], step
        opt.step()
        sched.step()


def test_warmup_ratio_rounds_up_like_transformers():
    from transformers import TrainingArguments

    for ratio, total in [(0.1, 95), (0.06, 1270), (0.0, 10), (0.5, 3)]:
        args = TrainingArguments(output_dir="unused", warmup_steps=ratio, report_to=[])
        assert warmup_steps_for(ratio, total) == args.get_warmup_steps(total)
