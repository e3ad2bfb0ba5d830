"""Where the meta-classifiers' training rows come from: the ``paper`` and ``oof`` protocols.

``paper`` (the paper's Algorithm 1): each base model is fine-tuned on the training
split; its predictions on the validation split train the meta-classifiers, which are
scored on its predictions on the test split.

``oof``: train and validation form one pool, cut into K stratified folds. Each base
model is fine-tuned K times, each time on K-1 folds, and predicts the fold it did not
see, so every pool row gets a prediction from a model that never trained on it; the
meta-classifiers learn from these out-of-fold predictions, and the test features are
the K fold models' test outputs averaged. Nothing in it sees a base model's outputs
on that model's own training rows, whose near-perfect scores would otherwise teach
the meta-classifier to trust a model that memorised. Fold models evaluate nothing
while training (no best-checkpoint choice by held-out labels): they predict with
their final (or SWA) weights.

``out_of_fold`` takes the base-model fitting as a function (``FoldTask`` in,
``FoldOutputs`` out), so tests can plug in a base model with known leakage;
``NativeFoldFitter`` is the real one: fold token stores cut from the base model's
own stores, and the native trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from enstack._C import DataError
from enstack.stacking.dataset import MetaDataset, MetaSplit, from_predictions
from enstack.predictions import data_key_of, predict_split
from enstack.trainer import Trainer

log = logging.getLogger("enstack")

__all__ = ["FoldOutputs", "FoldTask", "NativeFoldFitter", "Pool", "out_of_fold", "paper_dataset", "plan_folds"]


# ---------------------------------------------------------------- paper


def paper_dataset(configs: Mapping[str, Any], checkpoint: str, kinds: Sequence[str], train: bool = True,
                  batch_size: int = 0, progress: bool = True) -> MetaDataset:
    """Validation predictions for meta-training, test predictions for scoring (training base models first)."""
    validation, test = {}, {}
    for name, cfg in configs.items():
        trainer = Trainer(cfg)
        if train:
            log.info("base model %s: training or resuming in %s (nothing to do when it has finished)", name,
                     cfg.run.output_dir)
            _fit(trainer, progress)
        for split, into in (("validation", validation), ("test", test)):
            into[name] = predict_split(trainer, split, checkpoint, logits="logits" in kinds, batch_size=batch_size,
                                       model=name)
    features = "both" if len(kinds) == 2 else kinds[0]
    return from_predictions(validation, test, "paper", features)


def _fit(trainer: Trainer, progress: bool) -> None:
    """fit(resume=True), drawing the run's plots only when it trained: a finished run's plots are
    drawn already, and redrawing them (a validation pass) took longer than the stacking itself."""
    trained = []
    result = trainer.fit(resume=True, progress=progress, plots=False,
                         callback=lambda r: trained.append(True) if r.get("event") in ("log", "eval", "save") else None)
    if trained:
        trainer.write_plots(result.global_step)


# ---------------------------------------------------------------- oof


@dataclass
class Pool:
    """Rows in a fixed order: ids, labels (class indices), label names, and what the data is."""

    ids: List[str]
    labels: np.ndarray
    label_names: List[str]
    data_key: str = ""


@dataclass
class FoldTask:
    model: str
    fold: int
    folds: int
    train_rows: np.ndarray       # pool indices the fold model trains on
    heldout_rows: np.ndarray     # pool indices it predicts (disjoint from train_rows)


@dataclass
class FoldOutputs:
    heldout: Dict[str, np.ndarray]   # output kind -> [len(heldout_rows), C], in heldout_rows order
    test: Dict[str, np.ndarray]      # output kind -> [number of test rows, C]
    checkpoint: Dict[str, Any] = field(default_factory=dict)


FitBase = Callable[[FoldTask], FoldOutputs]


def plan_folds(labels: np.ndarray, folds: int, seed: int) -> List[np.ndarray]:
    """The held-out rows of each of ``folds`` stratified, seeded folds (sorted indices)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if len(labels) < folds:
        raise DataError(f"{len(labels)} examples cannot be cut into {folds} folds; lower stack.folds.")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in splitter.split(np.zeros(len(labels)), labels)]


def out_of_fold(models: Sequence[str], pool: Pool, test: Pool, folds: int, seed: int, fit_base: FitBase,
                kinds: Sequence[str] = ("probabilities",)) -> MetaDataset:
    """Meta-training rows from out-of-fold predictions over ``pool``; test rows from the fold models, averaged."""
    if list(pool.label_names) != list(test.label_names):
        raise DataError(f"the pool's labels {pool.label_names} and the test split's {test.label_names} differ.")
    if set(pool.ids) & set(test.ids):
        raise DataError("the oof pool (train + validation) and the test split share example ids.")
    n, c = len(pool.ids), len(pool.label_names)
    if len(set(pool.ids)) != n or len(pool.labels) != n:
        raise DataError("the oof pool's example ids are not unique (or not one label per id); give the data an id "
                        "column (data.id_column) whose values are unique across train and validation.")
    heldout_sets = plan_folds(pool.labels, folds, seed)
    everything = np.arange(n)
    train_out = {m: {k: np.full((n, c), np.nan) for k in kinds} for m in models}
    test_out = {m: {k: np.zeros((len(test.ids), c)) for k in kinds} for m in models}
    checkpoints: Dict[str, List[Dict[str, Any]]] = {m: [] for m in models}
    for m in models:
        for f, held in enumerate(heldout_sets):
            train_rows = np.setdiff1d(everything, held)
            out = fit_base(FoldTask(model=m, fold=f, folds=folds, train_rows=train_rows, heldout_rows=held))
            for kind in kinds:
                h, t = np.asarray(out.heldout.get(kind)), np.asarray(out.test.get(kind))
                if h.shape != (len(held), c) or t.shape != (len(test.ids), c):
                    raise DataError(f"base model {m}, fold {f}: {kind} of shapes {h.shape} and {t.shape}, expected "
                                    f"({len(held)}, {c}) held out and ({len(test.ids)}, {c}) test.")
                train_out[m][kind][held] = h
                test_out[m][kind] += t / folds
            if out.checkpoint:
                checkpoints[m].append(dict(out.checkpoint, fold=f))
        if np.isnan(train_out[m]["probabilities"]).any():  # the folds must cover the pool exactly once
            raise DataError(f"base model {m}: some pool rows got no out-of-fold prediction.")
    return MetaDataset(models=list(models), label_names=list(pool.label_names),
                       train=MetaSplit(list(pool.ids), np.asarray(pool.labels), train_out),
                       test=MetaSplit(list(test.ids), np.asarray(test.labels), test_out), protocol="oof",
                       checkpoints=checkpoints)


class NativeFoldFitter:
    """Fine-tunes a base model on K-1 folds with enstack's trainer, under <out_dir>/oof/<model>/fold-<k>/."""

    def __init__(self, configs: Mapping[str, Any], out_dir: Path, checkpoint: str = "final",
                 kinds: Sequence[str] = ("probabilities",), batch_size: int = 0, progress: bool = True):
        self.configs, self.out_dir, self.checkpoint = dict(configs), Path(out_dir), checkpoint
        self.kinds, self.batch_size, self.progress = tuple(kinds), batch_size, progress
        self._splits: Dict[str, Dict[str, Any]] = {}

    def pools(self) -> Tuple[Pool, Pool]:
        """The pool (train + validation) and the test split, checked to be the same rows for every base model."""
        from enstack.data.prepare import prepare

        found = {}
        for name, cfg in self.configs.items():
            splits = prepare(cfg, progress=self.progress)
            missing = [s for s in ("train", "validation", "test") if s not in splits]
            if missing:
                raise DataError(f"base model {name} has no {', '.join(missing)} split; oof needs train, validation "
                                "and test (set data.split to three ratios or give the files).")
            self._splits[name] = splits
            pool = _pool_of([splits["train"], splits["validation"]])
            test = _pool_of([splits["test"]])
            found[name] = (pool, test)
            first_name, (first_pool, first_test) = next(iter(found.items()))
            for what, a, b in (("pool", pool, first_pool), ("test split", test, first_test)):
                if a.data_key != b.data_key or a.ids != b.ids or not np.array_equal(a.labels, b.labels) \
                        or a.label_names != b.label_names:
                    raise DataError(f"base models {first_name} and {name} have different data in their {what} "
                                    "(ids, labels, label names or texts); train them on the same data.")
        return next(iter(found.values()))

    def __call__(self, task: FoldTask) -> FoldOutputs:
        if task.model not in self._splits:
            self.pools()
        splits, cfg = self._splits[task.model], self.configs[task.model]
        fold_dir = self.out_dir / "oof" / task.model / f"fold-{task.fold}"
        sources = [splits["train"], splits["validation"]]
        given = {"train": _subset_store(sources, task.train_rows, fold_dir / "data" / "train.tokens"),
                 "heldout": _subset_store(sources, task.heldout_rows, fold_dir / "data" / "heldout.tokens"),
                 "test": splits["test"]}
        fold_cfg = cfg.with_overrides({"run.output_dir": str(fold_dir), "run.mirror_dir": None,
                                       "train.metric_for_best": None, "train.early_stopping.patience": None})
        trainer = Trainer(fold_cfg, splits=given)  # no validation split: the fold model evaluates nothing
        log.info("base model %s, fold %d/%d: training on %d functions", task.model, task.fold + 1, task.folds,
                 len(task.train_rows))
        _fit(trainer, self.progress)
        out = {}
        for split in ("heldout", "test"):
            out[split] = predict_split(trainer, split, self.checkpoint, logits="logits" in self.kinds,
                                       batch_size=self.batch_size, out_dir=fold_dir / "predictions" / self.checkpoint,
                                       model=f"{task.model}/fold-{task.fold}")
        return FoldOutputs(heldout={k: out["heldout"].outputs[k] for k in self.kinds},
                           test={k: out["test"].outputs[k] for k in self.kinds}, checkpoint=out["test"].checkpoint)


def _pool_of(splits: Sequence[Any]) -> Pool:
    ids: List[str] = []
    labels = []
    for s in splits:
        store_labels = s.open().all_labels().numpy()
        if store_labels.ndim != 1:
            raise DataError(f"{s.store_path} is multilabel; stacking needs one class per function.")
        ids += list(s.ids)
        labels.append(store_labels.astype(np.int64))
    key = "+".join(data_key_of(s.store_path) for s in splits)
    return Pool(ids=ids, labels=np.concatenate(labels), label_names=list(splits[0].label_names), data_key=key)


def _subset_store(sources: Sequence[Any], rows: np.ndarray, path: Path):
    """A token store of ``rows`` of the concatenated ``sources`` (reused when already written)."""
    from enstack._C.data import TokenStore, write_token_store
    from enstack.data.prepare import PreparedSplit

    h = hashlib.sha256()
    for s in sources:
        h.update(s.fingerprint.encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    key = h.hexdigest()[:32]
    sidecar = path.with_suffix(".json")
    stores = [s.open() for s in sources]
    offsets = np.cumsum([0] + [len(s) for s in stores])
    ids = [i for s in sources for i in s.ids]
    names = list(sources[0].label_names)
    if sidecar.is_file() and path.is_file():
        meta = json.loads(sidecar.read_text())
        if meta.get("data_key") == key and TokenStore(str(path)).fingerprint == meta.get("fingerprint"):
            return PreparedSplit(path.stem, path, names, [ids[r] for r in rows], meta["fingerprint"], True)
    token_ids, labels = [], []
    for r in rows:
        k = int(np.searchsorted(offsets, r, side="right") - 1)
        token_ids.append(stores[k].ids(int(r - offsets[k])))
        labels.append(stores[k].labels(int(r - offsets[k]))[0])
    info = stores[0].info
    path.parent.mkdir(parents=True, exist_ok=True)
    written = write_token_store(str(path), token_ids, np.asarray(labels, dtype=np.int64), info["vocab_size"],
                                info["max_length"], info["tokenizer_identity"])
    meta = {"data_key": key, "fingerprint": written["fingerprint"], "label_names": names,
            "ids": [ids[r] for r in rows]}
    sidecar.write_text(json.dumps(meta))
    return PreparedSplit(path.stem, path, names, meta["ids"], written["fingerprint"], False)
