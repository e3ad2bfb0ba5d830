"""PNG plots of a run: training curves, confusion matrices (counts and %), ROC curves.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, not pyplot, so
plotting neither changes a notebook's backend nor needs a display. ``write_run_plots``
draws everything for a run directory into ``<output_dir>/metrics``; the single-plot
functions (``plot_confusion``, ``plot_roc``, ``plot_training_curves``) are for reuse,
e.g. by the stacking ensemble.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from enstack.monitor import history

__all__ = ["confusion_figure", "plot_confusion", "plot_roc", "plot_training_curves", "roc_curve",
           "write_run_plots"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, format="png")
    tmp.replace(path)  # never leave a half-written PNG on Drive
    return path


# ------------------------------------------------------------------ confusion matrices


def confusion_figure(matrix, labels: Optional[Sequence[str]] = None, percent: bool = False,
                     title: Optional[str] = None):
    """A matplotlib Figure of a confusion matrix (rows: true class, columns: predicted).

    ``matrix`` holds counts; ``percent`` shows each row as % of its true class.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    n = m.shape[0]
    labels = list(labels) if labels else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for a {n}x{n} confusion matrix")
    if percent:
        sums = m.sum(axis=1, keepdims=True)
        m = np.divide(m * 100.0, sums, out=np.zeros_like(m), where=sums > 0)
    size = max(4.0, 0.9 * n + 2.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=100 if percent else max(1.0, m.max()))
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of true class" if percent else "functions")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (100 if percent else max(1.0, m.max())) / 2
    for i in range(n):
        for j in range(n):
            text = f"{m[i, j]:.1f}%" if percent else f"{int(round(m[i, j])):,}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > threshold else "black")
    ax.set_title(("confusion matrix (%)" if percent else "confusion matrix") + (f", {title}" if title else ""))
    return fig


def plot_confusion(matrix, labels: Optional[Sequence[str]], path, percent: bool = False,
                   title: Optional[str] = None) -> Path:
    """Writes a confusion-matrix PNG of counts (or, with ``percent``, row % of each true class) to ``path``."""
    return _save(confusion_figure(matrix, labels, percent=percent, title=title), path)


# ------------------------------------------------------------------ ROC


def roc_curve(scores, positives) -> Tuple[np.ndarray, np.ndarray, float]:
    """(false-positive rates, true-positive rates, area) of one-vs-rest scores; tied scores share a point.

    The area is NaN when ``positives`` has only one class (the curve is undefined).
    """
    scores = np.asarray(scores, dtype=float)
    positives = np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.cumsum(positives)[last_of_tie]
    fp = np.cumsum(~positives)[last_of_tie]
    n_pos, n_neg = positives.sum(), (~positives).sum()
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it
    return fpr, tpr, float(trapezoid(tpr, fpr))


def plot_roc(probs, labels, label_names: Optional[Sequence[str]], path, title: Optional[str] = None) -> Path:
    """Writes one-vs-rest ROC curves (one per class, plus the micro average) to ``path``.

    ``probs``: [N, C] class probabilities; ``labels``: [N] true class indices.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = len(labels); got {probs.shape} and {labels.shape}")
    n_classes = probs.shape[1]
    names = list(label_names) if label_names else [str(i) for i in range(n_classes)]
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    onehot = np.eye(n_classes, dtype=bool)[labels]
    for c in range(n_classes):
        fpr, tpr, auc = roc_curve(probs[:, c], onehot[:, c])
        if not np.isnan(auc):
            ax.plot(fpr, tpr, linewidth=1.3, label=f"{names[c]} (AUC {auc:.3f})")
    fpr, tpr, auc = roc_curve(probs.ravel(), onehot.ravel())
    ax.plot(fpr, tpr, "k--", linewidth=1.6, label=f"micro average (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (one vs rest)" + (f", {title}" if title else ""))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------ training curves


def plot_training_curves(train_log: Sequence[Dict[str, Any]], evals: Sequence[Dict[str, Any]], path,
                         title: Optional[str] = None) -> Path:
    """Writes loss, learning rate, gradient norm and evaluation metrics against the optimizer step.

    ``train_log``: log records (``history.read_train_log``); ``evals``: eval metrics with
    a ``step`` (``history.read_evals``). Either may be empty.
    """
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2)
    steps = [r["step"] for r in train_log]

    def series(key: str) -> List[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in train_log]

    eval_steps = [e["step"] for e in evals]
    ax = axes[0][0]
    if train_log:
        ax.plot(steps, series("loss"), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(eval_steps, [e.get("loss", float("nan")) for e in evals], "o-", label="eval loss", linewidth=1.2)
    ax.set_title("loss")
    ax = axes[0][1]
    for name in ("accuracy", "f1_weighted", "f1_macro", "auc_weighted"):
        values = [float("nan") if e.get(name) is None else e[name] for e in evals]
        if evals and not all(np.isnan(values)):
            ax.plot(eval_steps, values, "o-", label=name, linewidth=1.2, markersize=3)
    ax.set_title("evaluation")
    ax.set_ylim(0, 1.02)
    ax = axes[1][0]
    if train_log:
        ax.plot(steps, series("learning_rate"), linewidth=1.2)
    ax.set_title("learning rate")
    ax = axes[1][1]
    if train_log:
        ax.plot(steps, series("grad_norm"), linewidth=1.2, label="grad norm (before clipping)")
    ax.set_title("gradient norm")
    for row in axes:
        for ax in row:
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ------------------------------------------------------------------ a whole run


def write_run_plots(output_dir, probs=None, labels=None, label_names: Optional[Sequence[str]] = None,
                    split: str = "validation", step: Optional[int] = None) -> List[Path]:
    """Draws a run's plots into ``<output_dir>/metrics`` and returns their paths.

    Always the training curves; with ``probs`` and ``labels`` (the predictions of the
    final model on ``split``) also the confusion matrices, counts and %, and the ROC
    curves, named ``<split>-confusion.png``, ``<split>-confusion-percent.png`` and
    ``<split>-roc.png``. Without them the confusion matrices of the newest evaluation
    are drawn as ``eval-confusion*.png``.
    """
    metrics_dir = Path(output_dir) / "metrics"
    evals = history.read_evals(metrics_dir, max_step=step)
    written = [plot_training_curves(history.read_train_log(metrics_dir), evals, metrics_dir / "training-curves.png")]
    at = f"step {step}" if step is not None else None
    if probs is not None and labels is not None:
        probs = np.asarray(probs, dtype=float)
        labels = np.asarray(labels).astype(int).reshape(-1)
        n = probs.shape[1]
        counts = np.zeros((n, n), dtype=np.int64)
        np.add.at(counts, (labels, probs.argmax(axis=1)), 1)
        title = f"{split}, {at}" if at else split
        written.append(plot_confusion(counts, label_names, metrics_dir / f"{split}-confusion.png", title=title))
        written.append(plot_confusion(counts, label_names, metrics_dir / f"{split}-confusion-percent.png",
                                      percent=True, title=title))
        written.append(plot_roc(probs, labels, label_names, metrics_dir / f"{split}-roc.png", title=title))
    elif evals and evals[-1].get("confusion") is not None:
        newest = evals[-1]
        names = [row["label"] for row in newest.get("per_class") or []] or label_names
        title = f"eval at step {newest['step']}"
        written.append(plot_confusion(newest["confusion"], names, metrics_dir / "eval-confusion.png", title=title))
        written.append(plot_confusion(newest["confusion"], names, metrics_dir / "eval-confusion-percent.png",
                                      percent=True, title=title))
    return written
