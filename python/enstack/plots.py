"""Deprecated: use ``enstack.monitor.plots`` (the same functions)."""

import warnings

from enstack.monitor.plots import (confusion_figure, plot_confusion, plot_roc, plot_training_curves,  # noqa: F401
                                   roc_curve, write_run_plots)

__all__ = ["confusion_figure", "plot_confusion", "plot_roc", "plot_training_curves", "roc_curve", "write_run_plots"]

warnings.warn("enstack.plots is deprecated; use enstack.monitor.plots", DeprecationWarning, stacklevel=2)
