"""The results table: metrics of every row, and its Markdown, CSV and JSON forms.

Metrics are scikit-learn's, computed from each row's test-set class probabilities
(predicted class: the most probable): accuracy; precision, recall and F1 weighted by
class support (the paper's) and macro; ROC-AUC one-vs-rest, weighted and macro. A
class absent from the test labels has no AUC and is left out of the AUC averages
(scikit-learn would refuse the whole score).
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = ["METRICS", "StackReport", "compute_metrics"]

METRICS = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "precision_macro", "recall_macro",
           "f1_macro", "auc_weighted", "auc_macro")
# The Markdown table shows the paper's columns plus macro F1 and AUC; CSV and JSON have them all.
_SHOWN = (("accuracy", "Accuracy"), ("precision_weighted", "Precision (w)"), ("recall_weighted", "Recall (w)"),
          ("f1_weighted", "F1 (w)"), ("f1_macro", "F1 (macro)"), ("auc_weighted", "AUC (w)"))


def compute_metrics(probabilities: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """Metrics of class probabilities [N, C] against labels [N] (class indices).

    The argument order is that of the native ``enstack._C.train.compute_metrics``; the
    earlier order ``(labels, probabilities)`` still works, with a ``DeprecationWarning``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    if np.ndim(probabilities) == 1 and np.ndim(labels) == 2:
        warnings.warn("compute_metrics(labels, probabilities) is deprecated; pass (probabilities, labels)",
                      DeprecationWarning, stacklevel=2)
        probabilities, labels = labels, probabilities
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    c = p.shape[1]
    pred = np.argmax(p, axis=1)
    classes = list(range(c))
    out: Dict[str, Any] = {"count": int(len(y)), "accuracy": float(accuracy_score(y, pred))}
    for average in ("weighted", "macro"):
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=classes, average=average, zero_division=0)
        out[f"precision_{average}"], out[f"recall_{average}"], out[f"f1_{average}"] = float(prec), float(rec), float(f1)
    aucs, supports = [], []
    for k in classes:
        positives = y == k
        if 0 < positives.sum() < len(y):
            aucs.append(roc_auc_score(positives, p[:, k]))
            supports.append(positives.sum())
    out["auc_weighted"] = float(np.average(aucs, weights=supports)) if aucs else None
    out["auc_macro"] = float(np.mean(aucs)) if aucs else None
    out["confusion"] = confusion_matrix(y, pred, labels=classes).tolist()
    return out


@dataclass
class StackReport:
    """Every row of the results table, the best one, and where everything was written."""

    rows: List[Dict[str, Any]]          # {key, models, meta, kind, metrics..., best}
    best: str                           # key of the best stacked row
    select_by: str
    label_names: List[str]
    protocol: str
    features: str
    checkpoint: str
    output_dir: Path
    files: Dict[str, str] = field(default_factory=dict)

    def row(self, key: str) -> Dict[str, Any]:
        return next(r for r in self.rows if r["key"] == key)

    @property
    def best_row(self) -> Dict[str, Any]:
        return self.row(self.best)

    def markdown(self) -> str:
        head = ["Base models", "Meta-classifier", *(title for _, title in _SHOWN)]
        lines = [f"EnStack results: protocol {self.protocol}, features {self.features}, checkpoint "
                 f"{self.checkpoint}; test set of {self.rows[0]['count']} functions; best by {self.select_by} "
                 "in bold. Scores in %.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(_SHOWN)]
        for r in self.rows:
            cells = [" + ".join(r["models"]), r["meta"] or "none (base model alone)",
                     *(_percent(r[key]) for key, _ in _SHOWN)]
            if r["best"]:
                cells = [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["key", "models", "meta", "kind", *METRICS, "count", "best"])
        for r in self.rows:
            writer.writerow([r["key"], "+".join(r["models"]), r["meta"] or "", r["kind"],
                             *("" if r[m] is None else repr(r[m]) for m in METRICS), r["count"], int(r["best"])])
        return buf.getvalue()

    def to_json(self) -> Dict[str, Any]:
        return {"protocol": self.protocol, "features": self.features, "checkpoint": self.checkpoint,
                "select_by": self.select_by, "label_names": self.label_names, "best": self.best, "rows": self.rows}

    def write(self) -> Dict[str, str]:
        """results.md, results.csv and results.json in output_dir."""
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.md", self.markdown()), ("results.csv", self.csv()),
                           ("results.json", json.dumps(self.to_json(), indent=1, allow_nan=False))):
            tmp = out / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(out / name)
            self.files[name] = str(out / name)
        return self.files


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def mark_best(rows: List[Dict[str, Any]], select_by: str) -> str:
    """Marks the stacked row with the highest ``select_by`` (earliest row on ties); returns its key."""
    stacked = [r for r in rows if r["kind"] == "stack" and r[select_by] is not None]
    candidates = stacked or [r for r in rows if r[select_by] is not None] or rows
    best = max(candidates, key=lambda r: r[select_by] if r[select_by] is not None else -1.0)  # max keeps the first
    for r in rows:
        r["best"] = r is best
    return best["key"]
