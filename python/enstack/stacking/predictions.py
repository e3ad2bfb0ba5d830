"""Moved to ``enstack.predictions``: the prediction files are a trained model's (written by
``Trainer.write_predictions``), which stacking reads. This name is the same module."""

import sys

from enstack import predictions as _module

sys.modules[__name__] = _module
