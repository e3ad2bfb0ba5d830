"""PNG plots of a stacking run: confusion matrices and ROC curves (matplotlib, Agg backend).

Written under ``<output_dir>/plots/``: ``confusion-<row>.png`` for the best stack and
each base model alone, ``roc-best.png`` (one-vs-rest curve of every class for the
best stack) and ``roc-compare.png`` (micro-averaged one-vs-rest curve of each base
model alone and of the best stack).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["write_plots"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display in Colab kernels' subprocesses or CI
    import matplotlib.pyplot as plt

    return plt


def _confusion(plt, path: Path, confusion: Sequence[Sequence[int]], label_names: Sequence[str], title: str) -> None:
    matrix = np.asarray(confusion, dtype=np.float64)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.1 * len(label_names) + 1.5))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(label_names)):
        for j in range(len(label_names)):
            ax.text(j, i, f"{int(matrix[i, j])}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(label_names)), label_names, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _roc_axes(plt, title: str):
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    return fig, ax


def _finish(plt, fig, ax, path: Path) -> None:
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(out_dir: Path, rows: List[Dict], probabilities: Dict[str, np.ndarray], labels: np.ndarray,
                label_names: Sequence[str], best: str) -> List[str]:
    """Writes the plots for the best row and the base-model rows; returns their paths."""
    from sklearn.metrics import auc, roc_curve

    plt = _pyplot()
    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    chosen = [r for r in rows if r["key"] == best] + [r for r in rows if r["kind"] == "base"]
    for r in chosen:
        name = "best" if r["key"] == best else r["key"].replace(":", "-")
        path = out / f"confusion-{name}.png"
        title = f"{' + '.join(r['models'])}, {r['meta'] or 'alone'}: accuracy {100 * r['accuracy']:.2f}%"
        _confusion(plt, path, r["confusion"], label_names, title)
        written.append(str(path))

    best_row = chosen[0]
    fig, ax = _roc_axes(plt, f"ROC one-vs-rest: {' + '.join(best_row['models'])}, {best_row['meta']}")
    for k, name in enumerate(label_names):
        positives = labels == k
        if 0 < positives.sum() < len(labels):
            fpr, tpr, _ = roc_curve(positives, probabilities[best][:, k])
            ax.plot(fpr, tpr, linewidth=1.2, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    _finish(plt, fig, ax, out / "roc-best.png")
    written.append(str(out / "roc-best.png"))

    fig, ax = _roc_axes(plt, "ROC micro-averaged one-vs-rest")
    onehot = np.eye(len(label_names))[labels].ravel()
    for r in chosen[1:] + chosen[:1]:
        fpr, tpr, _ = roc_curve(onehot, probabilities[r["key"]].ravel())
        who = " + ".join(r["models"]) + (f", {r['meta']}" if r["meta"] else "")
        ax.plot(fpr, tpr, linewidth=2.0 if r["key"] == best else 1.2, label=f"{who} (AUC {auc(fpr, tpr):.3f})")
    _finish(plt, fig, ax, out / "roc-compare.png")
    written.append(str(out / "roc-compare.png"))
    return written
