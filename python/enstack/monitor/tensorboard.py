"""TensorBoard event files for a run: ``<output_dir>/logs``, written from the native loop's records.

``TensorBoardLogger`` is a record handler (``Trainer.fit`` wires it in): training
scalars from ``log`` records (loss, learning rate, grad norm, loss scale, skipped
steps, throughput, memory), evaluation scalars and confusion-matrix images from
``eval`` records, and checkpoint save errors as text.

A resumed run appends to the same directory. The records between the checkpoint
it resumes from and the moment the previous session died were already written
once; the writer is opened with ``purge_step`` so TensorBoard discards those
orphans and every step appears once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

log = logging.getLogger("enstack")

__all__ = ["TensorBoardLogger", "EVAL_SCALARS", "TRAIN_SCALARS"]

#: log-record key -> TensorBoard tag.
TRAIN_SCALARS = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "loss_scale": "train/loss_scale",
    "skipped_steps": "train/skipped_steps",
    "samples_per_second": "train/samples_per_second",
    "tokens_per_second": "train/tokens_per_second",
    "epoch": "train/epoch",
}
#: Memory fields of log records (bytes), shown in GiB.
MEMORY_SCALARS = {
    "rss_bytes": "memory/rss_gib",
    "cuda_max_allocated_bytes": "memory/cuda_max_allocated_gib",
    "cuda_max_reserved_bytes": "memory/cuda_max_reserved_gib",
}
#: Scalar metrics of eval records, tagged eval/<name>.
EVAL_SCALARS = ("loss", "accuracy", "precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
                "f1_macro", "f1_micro", "f1_weighted", "mcc", "auc_macro", "auc_weighted")
PER_CLASS = ("f1", "precision", "recall", "auc")


class TensorBoardLogger:
    """Writes the records of ``Trainer.fit`` as TensorBoard events under ``log_dir``.

    ``images=False`` skips the confusion-matrix figures (they need matplotlib and take
    a few hundred milliseconds each).
    """

    def __init__(self, log_dir, images: bool = True, label_names: Optional[Sequence[str]] = None):
        self.log_dir = Path(log_dir)
        self.images = images
        self.label_names = list(label_names) if label_names else None
        self.writer = None

    def __call__(self, record: Dict[str, Any]) -> None:
        event = record.get("event")
        if event == "begin":
            self._open(record)
            return
        if self.writer is None:
            return
        step = int(record.get("step", 0))
        if event == "log":
            self._log(record, step)
        elif event == "eval":
            self._eval(record.get("metrics") or {}, step, prefix=_eval_prefix(record))
        elif event == "save_error":
            self.writer.add_text("checkpoint/save_error", str(record.get("error", record)), step)
            self.writer.flush()  # a Drive failure is exactly when a later crash is likely
        elif event == "end":
            self.writer.flush()

    def _open(self, record: Dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.close()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Everything up to and including the checkpoint's step was written before it was
        # saved (log, eval, then save at a step); later events are orphans of the lost session.
        purge = int(record["step"]) + 1 if record.get("resumed") else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def _log(self, record: Dict[str, Any], step: int) -> None:
        for key, tag in TRAIN_SCALARS.items():
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)
        for key, tag in MEMORY_SCALARS.items():
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value) / 2**30, step)

    def _eval(self, metrics: Dict[str, Any], step: int, prefix: str) -> None:
        for name in EVAL_SCALARS:
            value = metrics.get(name)
            if value is not None:  # auc is None when a class is absent from the split
                self.writer.add_scalar(f"{prefix}/{name}", float(value), step)
        for row in metrics.get("per_class") or []:
            for name in PER_CLASS:
                if row.get(name) is not None:
                    self.writer.add_scalar(f"{prefix}_per_class/{name}/{row['label']}", float(row[name]), step)
        if self.images and metrics.get("confusion") is not None:
            self._confusion_images(metrics, step, prefix)
        self.writer.flush()  # evaluations are rare; make them visible in TensorBoard at once

    def _confusion_images(self, metrics: Dict[str, Any], step: int, prefix: str) -> None:
        from enstack.monitor import plots

        labels = [row["label"] for row in metrics.get("per_class") or []] or self.label_names
        for key, percent in (("confusion", False), ("confusion_percent", True)):
            # Both images from the counts: the percentages are computed from them.
            figure = plots.confusion_figure(metrics["confusion"], labels, percent=percent, title=f"step {step}")
            self.writer.add_figure(f"{prefix}/{key}", figure, step, close=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _eval_prefix(record: Dict[str, Any]) -> str:
    # An evaluation of the SWA average is tagged apart from the model being trained.
    return "eval_swa" if record.get("swa") else "eval"
