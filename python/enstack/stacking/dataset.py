"""The meta-classifiers' data: base-model outputs on the same functions, checked to line up.

A ``MetaDataset`` holds, for the meta-training rows and the test rows, every base
model's outputs (probabilities, optionally logits) in one row order, the labels and
the ids. ``from_predictions`` builds it from prediction files and refuses (with
``DataError``) anything that would silently stack unrelated rows: base models that
predicted different datasets or label sets, a missing split, ids that do not match,
or labels that disagree for the same id. Rows in another order are aligned by id.
``feature_matrix`` concatenates the chosen models' outputs into meta-features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from enstack._C import DataError
from enstack.predictions import PredictionSet

__all__ = ["MetaDataset", "MetaSplit", "feature_matrix", "from_predictions"]

FEATURES = ("probabilities", "logits", "both")


@dataclass
class MetaSplit:
    """One side of the meta data (meta-training or test): rows in one order for every base model."""

    ids: List[str]
    labels: np.ndarray                              # int64 [N]
    outputs: Dict[str, Dict[str, np.ndarray]]       # model -> {"probabilities": [N, C], "logits": [N, C]}


@dataclass
class MetaDataset:
    models: List[str]
    label_names: List[str]
    train: MetaSplit
    test: MetaSplit
    protocol: str
    checkpoints: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)  # model -> weights used

    def features(self, side: str, models: Sequence[str], kind: str) -> Tuple[np.ndarray, List[str]]:
        split = self.train if side == "train" else self.test
        return feature_matrix({m: split.outputs[m] for m in models}, models, kind, self.label_names)


def feature_matrix(outputs: Mapping[str, Mapping[str, np.ndarray]], models: Sequence[str], kind: str,
                   label_names: Sequence[str]) -> Tuple[np.ndarray, List[str]]:
    """Meta-features [N, F]: each model's probabilities and/or logits side by side, in ``models`` order."""
    if kind not in FEATURES:
        raise DataError(f"features must be one of {', '.join(FEATURES)}, not {kind!r}.")
    kinds = ("probabilities", "logits") if kind == "both" else (kind,)
    columns, names = [], []
    for m in models:
        if m not in outputs:
            raise DataError(f"no outputs of base model '{m}'; the meta-classifier needs {', '.join(models)}.")
        for k in kinds:
            array = outputs[m].get(k)
            if array is None:
                raise DataError(f"base model '{m}' has no {k}; predict them (stack.features: {kind}).")
            array = np.asarray(array, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != len(label_names):
                raise DataError(f"base model '{m}': {k} have shape {array.shape}, expected [N, {len(label_names)}].")
            columns.append(array)
            names += [f"{m}:{k[:5]}:{label}" for label in label_names]
    lengths = {c.shape[0] for c in columns}
    if len(lengths) > 1:
        raise DataError(f"base-model outputs have different numbers of rows {sorted(lengths)}.")
    return np.concatenate(columns, axis=1), names


def _align(sets: Mapping[str, PredictionSet], split: str, kinds: Sequence[str]) -> MetaSplit:
    """The sets of one split in the first model's row order, after checking they describe the same rows."""
    models = list(sets)
    first = sets[models[0]]
    order_of = {i: r for r, i in enumerate(first.ids)}
    outputs = {}
    for m in models:
        ps = sets[m]
        if ps.data_key != first.data_key:
            raise DataError(f"the {split} predictions of '{m}' and '{models[0]}' come from different datasets "
                            f"(data keys {ps.data_key} and {first.data_key}); base models must be trained and "
                            "evaluated on the same data (same files, split ratios and run.seed).")
        if ps.ids == first.ids:
            rows = np.arange(len(ps.ids))
        else:
            row_of = {i: r for r, i in enumerate(ps.ids)}
            unmatched = [i for i in ps.ids if i not in order_of][:3] or [i for i in first.ids if i not in row_of][:3]
            if len(ps.ids) != len(first.ids) or unmatched:
                raise DataError(f"the {split} predictions of '{m}' ({len(ps.ids)} rows) and '{models[0]}' "
                                f"({len(first.ids)} rows) are not of the same examples (e.g. ids {unmatched}); "
                                "predict both on the same split again.")
            rows = np.array([row_of[i] for i in first.ids])  # the row of ps holding each row of first
        if not np.array_equal(ps.labels[rows], first.labels):
            bad = int(np.flatnonzero(ps.labels[rows] != first.labels)[0])
            raise DataError(f"the {split} labels of '{m}' and '{models[0]}' differ (first at id "
                            f"{first.ids[bad]!r}); the predictions come from different data.")
        missing_kind = [k for k in kinds if k not in ps.outputs]
        if missing_kind:
            raise DataError(f"the {split} predictions of '{m}' have no {missing_kind[0]}; predict them again.")
        outputs[m] = {k: np.asarray(ps.outputs[k])[rows] for k in kinds}
    return MetaSplit(ids=list(first.ids), labels=first.labels.copy(), outputs=outputs)


def from_predictions(train: Mapping[str, PredictionSet], test: Mapping[str, PredictionSet], protocol: str = "paper",
                     features: str = "probabilities") -> MetaDataset:
    """A MetaDataset from each base model's meta-training and test predictions (DataError when they disagree)."""
    if not train:
        raise DataError("no base models to stack.")
    for side, sets in (("meta-training", train), ("test", test)):
        missing = [m for m in train if m not in sets]
        if missing or set(sets) != set(train):
            raise DataError(f"{side} predictions are missing for {missing or sorted(set(sets) - set(train))}; every "
                            "base model needs meta-training and test predictions.")
    first = next(iter(train))
    names = list(train[first].label_names)
    for side, sets in (("meta-training", train), ("test", test)):
        for m, ps in sets.items():
            ps.validate(f"{m} ({side})")
            if list(ps.label_names) != names:
                raise DataError(f"the label sets differ: '{m}' ({side}) has {list(ps.label_names)}, '{first}' has "
                                f"{names}; base models must classify the same classes in the same order.")
    kinds = ("probabilities", "logits") if features == "both" else ("probabilities", features)
    kinds = tuple(dict.fromkeys(kinds))
    train_split = _align(train, "meta-training", kinds)
    test_split = _align({m: test[m] for m in train}, "test", kinds)
    if set(train_split.ids) & set(test_split.ids):
        raise DataError("the meta-training and test predictions share example ids; they must be disjoint splits.")
    checkpoints = {m: [dict(train[m].checkpoint)] if train[m].checkpoint else [] for m in train}
    return MetaDataset(models=list(train), label_names=names, train=train_split, test=test_split, protocol=protocol,
                       checkpoints=checkpoints)
