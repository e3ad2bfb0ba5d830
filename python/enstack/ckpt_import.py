"""Deprecated: use ``enstack.ckpt.import_checkpoint`` (the module is ``enstack.ckpt.importer``)."""

import warnings

from enstack.ckpt.importer import hf_decay_parameter_names, import_checkpoint  # noqa: F401

__all__ = ["hf_decay_parameter_names", "import_checkpoint"]

warnings.warn("enstack.ckpt_import is deprecated; use enstack.ckpt.import_checkpoint", DeprecationWarning,
              stacklevel=2)
