"""Meta-classifiers with the EnStack paper's settings, and their safe persistence.

The paper's four: logistic regression (liblinear, max_iter 200), SVM (RBF kernel,
probability=True), random forest (200 trees, max depth 10) and XGBoost (100 trees,
learning rate 0.1, max depth 6, mlogloss), all seeded. Two adaptations keep those
settings working on current scikit-learn: liblinear is binary-only since 1.8, so with
three or more classes it is wrapped one-vs-rest (exactly what older scikit-learn did
inside LogisticRegression); and when SVC loses ``probability`` (deprecated in 1.9,
removed in 1.11) the same Platt scaling comes from ``CalibratedClassifierCV``.

A saved ``MetaModel`` is a directory: ``model.json`` (XGBoost's own format) or
``model.skops`` (scikit-learn through skops, loaded with an explicit list of trusted
types, so loading never runs code), and ``meta.json`` (base models, features, label
names, the file's sha256), written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from enstack._C import CheckpointError, ConfigError, DataError
from enstack.stacking.dataset import feature_matrix

__all__ = ["MetaModel", "fit_meta", "load_meta_model", "make_classifier"]

FORMAT = "enstack-meta-model"
VERSION = 1
# Types skops must be told to trust beyond its defaults (numpy, builtins, most of scikit-learn);
# anything else found in a file is refused before it is loaded.
_TRUSTED = ("sklearn.tree._tree.Tree", "sklearn.calibration._CalibratedClassifier",
            "sklearn.calibration._SigmoidCalibration")


def _svc_has_probability() -> bool:
    import inspect

    from sklearn.svm import SVC

    return "probability" in inspect.signature(SVC.__init__).parameters


def make_classifier(name: str, num_classes: int, seed: int, n_jobs: int = 1):
    """An unfitted meta-classifier ``name`` (lr, svm, rf, xgboost) with the paper's settings."""
    if name == "lr":
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        lr = LogisticRegression(solver="liblinear", max_iter=200, random_state=seed)
        return lr if num_classes == 2 else OneVsRestClassifier(lr)
    if name == "svm":
        from sklearn.svm import SVC

        if _svc_has_probability():
            return SVC(kernel="rbf", probability=True, random_state=seed)
        from sklearn.calibration import CalibratedClassifierCV

        return CalibratedClassifierCV(SVC(kernel="rbf", random_state=seed), ensemble=False)
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=200, max_depth=10, random_state=seed, n_jobs=n_jobs)
    if name == "xgboost":
        from xgboost import XGBClassifier

        # One thread: histogram sums in another thread count could round differently, and the
        # table must not depend on the machine. The meta data is small (one row per validation function).
        return XGBClassifier(n_estimators=100, learning_rate=0.1, max_depth=6, random_state=seed, n_jobs=1,
                             eval_metric="mlogloss" if num_classes > 2 else "logloss", tree_method="hist")
    raise ConfigError(f"unknown meta-classifier {name!r}; use lr, svm, rf or xgboost.")


@dataclass
class MetaModel:
    """A fitted meta-classifier and what it expects: which base models' outputs, in which order."""

    classifier: str
    estimator: Any
    models: List[str]
    features: str
    label_names: List[str]
    classes: List[int]                 # label indices seen in training, in the estimator's column order
    feature_names: List[str]
    info: Dict[str, Any] = field(default_factory=dict)   # protocol, seed, base-model checkpoints

    def build_features(self, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
        """Meta-features from base-model outputs: ``{model: {"probabilities": [N, C], "logits": ...}}``."""
        return feature_matrix(outputs, self.models, self.features, self.label_names)[0]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] over all label names (0 for a class unseen in training)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise DataError(f"the {self.classifier} meta-model over {'+'.join(self.models)} takes "
                            f"{len(self.feature_names)} features ({self.features} of each base model), got shape "
                            f"{x.shape}; build them with MetaModel.build_features.")
        out = np.zeros((x.shape[0], len(self.label_names)))
        out[:, self.classes] = self.estimator.predict_proba(x)
        return out

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(features), axis=1)

    def save(self, directory: os.PathLike) -> Path:
        """Writes the directory (replacing an older one); meta.json last."""
        directory = Path(directory)
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.classifier == "xgboost":
            file = tmp / "model.json"
            self.estimator.save_model(str(file))
        else:
            import skops.io

            file = tmp / "model.skops"
            skops.io.dump(self.estimator, str(file))
        meta = {"format": FORMAT, "version": VERSION, "classifier": self.classifier, "models": self.models,
                "features": self.features, "label_names": self.label_names, "classes": self.classes,
                "feature_names": self.feature_names, "file": file.name, "sha256": _sha256(file),
                "implementation": type(self.estimator).__name__, "versions": _versions(), "info": self.info}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
        return directory


def fit_meta(name: str, x: np.ndarray, y: np.ndarray, models: Sequence[str], features: str,
             label_names: Sequence[str], feature_names: Sequence[str], seed: int, n_jobs: int = 1,
             info: Optional[Dict[str, Any]] = None) -> MetaModel:
    """Fits meta-classifier ``name`` on features ``x`` and labels ``y`` (class indices)."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"the meta-training labels hold a single class ({label_names[int(classes[0])]} only); the "
                        "meta-classifier needs examples of at least two classes.")
    estimator = make_classifier(name, len(classes), seed, n_jobs)
    encoded = np.searchsorted(classes, y)  # XGBoost wants 0..k-1; the columns map back through `classes`
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True): the paper's setting, kept while it exists
        estimator.fit(np.asarray(x, dtype=np.float64), encoded)
    return MetaModel(classifier=name, estimator=estimator, models=list(models), features=features,
                     label_names=list(label_names), classes=[int(c) for c in classes],
                     feature_names=list(feature_names), info=dict(info or {}))


def load_meta_model(directory: os.PathLike) -> MetaModel:
    """Loads a saved meta-model directory without executing code from it (CheckpointError when invalid)."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{directory} is not a saved meta-model ({e}); `enstack stack` writes them under "
                              "<output_dir>/meta/<base models>/<classifier>/.") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"{directory / 'meta.json'} is not an enstack meta-model (format {FORMAT} v{VERSION}).")
    file = directory / meta["file"]
    if not file.is_file() or _sha256(file) != meta["sha256"]:
        raise CheckpointError(f"{file} is missing or does not match its checksum; run `enstack stack` again.")
    if meta["classifier"] == "xgboost":
        from xgboost import XGBClassifier

        estimator = XGBClassifier()
        estimator.load_model(str(file))
    else:
        import skops.io

        untrusted = skops.io.get_untrusted_types(file=str(file))
        refused = [t for t in untrusted if t not in _TRUSTED]
        if refused:
            raise CheckpointError(f"{file} holds types enstack does not trust ({', '.join(refused)}); it was not "
                                  "written by enstack. Delete it and run `enstack stack` again.")
        estimator = skops.io.load(str(file), trusted=untrusted)
    return MetaModel(classifier=meta["classifier"], estimator=estimator, models=meta["models"],
                     features=meta["features"], label_names=meta["label_names"], classes=meta["classes"],
                     feature_names=meta["feature_names"], info=meta.get("info", {}))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> Dict[str, str]:
    import sklearn

    out = {"scikit-learn": sklearn.__version__}
    try:
        import xgboost

        out["xgboost"] = xgboost.__version__
    except ImportError:  # pragma: no cover - xgboost is a dependency
        pass
    return out
