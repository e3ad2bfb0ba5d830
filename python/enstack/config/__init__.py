"""The run configuration: schema (frozen dataclasses), YAML loading, validation, trainer options.

A config is YAML with four sections, ``run``, ``model``, ``data`` and ``train``.
``load_config`` composes files (``include:`` and lists of files, deep-merged left
to right), applies dotted overrides, resolves relative paths and validates,
reporting every problem at once in one ``enstack.ConfigError``.

``schema`` holds the sections and their defaults, ``loading`` the YAML composition,
``validate`` the type and rule checks, and ``options`` the one function that turns a
config into the native trainer's options (``trainer_options``).
"""

from __future__ import annotations

from enstack.config.loading import PathLike, load_config
from enstack.config.options import resolve_device, resolve_precision, trainer_options
from enstack.config.schema import (DEMO_DATA, ENSTACK5_LABELS, Config, DataConfig, EarlyStoppingConfig, ModelConfig,
                                   RunConfig, SwaConfig, TokenizerConfig, TrainConfig)

__all__ = [
    "Config",
    "DataConfig",
    "DEMO_DATA",
    "EarlyStoppingConfig",
    "ENSTACK5_LABELS",
    "ModelConfig",
    "PathLike",
    "RunConfig",
    "SwaConfig",
    "TokenizerConfig",
    "TrainConfig",
    "load_config",
    "resolve_device",
    "resolve_precision",
    "trainer_options",
]
