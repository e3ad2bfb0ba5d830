"""Watching a run: TensorBoard events, the JSON-lines training log, PNG plots and the progress bar.

``history`` (``TrainLog``, ``read_train_log``, ``read_evals``), ``progress``
(``ProgressBar``), ``tensorboard`` (``TensorBoardLogger``) and ``plots``
(``plot_confusion``, ``plot_roc``, ``plot_training_curves``). The trainer feeds them
the native loop's records. ``plots`` and ``tensorboard`` are imported on use
(matplotlib and tensorboard are slow to import), so this package imports neither.
"""

from __future__ import annotations

from enstack.monitor.history import TrainLog, read_evals, read_train_log
from enstack.monitor.progress import ProgressBar

__all__ = ["ProgressBar", "TrainLog", "read_evals", "read_train_log"]
