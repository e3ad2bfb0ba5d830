"""EnStack: stacking meta-classifiers over fine-tuned base models (Ridoy et al., 2024).

    report = enstack.stack("configs/demo-stack.yaml")        # or `enstack stack CONFIG`
    print(report.markdown())

    meta = enstack.stacking.load_meta_model("runs/demo-stack/meta/demo+demo-deep/svm")
    features = meta.build_features({"demo": {"probabilities": p1}, "demo-deep": {"probabilities": p2}})
    probabilities = meta.predict_proba(features)               # [N, C] over meta.label_names

Modules: ``config`` (the stacking config), ``predictions`` (per-split prediction files
of a base model), ``dataset`` (aligned, checked meta data and features), ``meta``
(the paper's meta-classifiers, saved without pickle), ``protocols`` (paper and
out-of-fold), ``experiment`` (the results table), ``report`` and ``plots``.
"""

from __future__ import annotations

import os
from typing import Mapping, Union

import numpy as np

from enstack.stacking.config import META_CLASSIFIERS, StackConfig, StackSection, load_stack_config
from enstack.stacking.dataset import MetaDataset, MetaSplit, feature_matrix, from_predictions
from enstack.stacking.experiment import run_table, stack
from enstack.stacking.meta import MetaModel, fit_meta, load_meta_model, make_classifier
from enstack.predictions import PredictionSet, predict_split
from enstack.stacking.protocols import FoldOutputs, FoldTask, Pool, out_of_fold, paper_dataset, plan_folds
from enstack.stacking.report import StackReport, compute_metrics

__all__ = [
    "META_CLASSIFIERS",
    "FoldOutputs",
    "FoldTask",
    "MetaDataset",
    "MetaModel",
    "MetaSplit",
    "Pool",
    "PredictionSet",
    "StackConfig",
    "StackReport",
    "StackSection",
    "compute_metrics",
    "feature_matrix",
    "fit_meta",
    "from_predictions",
    "load_meta_model",
    "load_stack_config",
    "make_classifier",
    "out_of_fold",
    "paper_dataset",
    "plan_folds",
    "predict_proba",
    "predict_split",
    "run_table",
    "stack",
]


def predict_proba(meta_dir: Union[str, "os.PathLike[str]"],
                  outputs: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Class probabilities [N, C] of a saved meta-model for base-model ``outputs``
    (``{model: {"probabilities": [N, C], "logits": ...}}``): load, build features, predict."""
    meta = load_meta_model(meta_dir)
    return meta.predict_proba(meta.build_features(outputs))
