"""Encoder classifiers (RoBERTa family, BERT) with Hugging Face weights in and out.

``load(model_dir)`` reads ``config.json`` plus ``model.safetensors`` (or its shards)
natively in C++. A directory that only has ``pytorch_model.bin`` is read here with
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects, and the
tensors are handed to C++: the core itself never unpickles.

Models are for inference and tests; training goes through ``enstack.Trainer``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from enstack import _C
from enstack._C import ModelError
from enstack._C.model import EncoderClassifier

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["EncoderClassifier", "config_of", "from_config", "load", "load_pickled"]


def load(model_dir: PathLike, num_labels: Optional[int] = None) -> EncoderClassifier:
    """Loads a Hugging Face RoBERTa/BERT directory as an ``EncoderClassifier``.

    ``num_labels`` replaces the checkpoint's labels; a head of another size (or a
    base checkpoint without a head) gets a freshly initialised head.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(
            f"model directory '{path}' does not exist. Give a local directory with config.json and "
            "model.safetensors (download one with `huggingface-cli download microsoft/codebert-base "
            "--local-dir DIR` where a network is available)."
        )
    has_safetensors = (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists()
    if has_safetensors or not (path / "pytorch_model.bin").exists():
        return _C.model.load_pretrained(str(path), num_labels)
    return _C.model.from_state(str(path / "config.json"), _read_pickled_weights(path), num_labels)


def load_pickled(path: PathLike, error: type = ModelError, advice: str = "") -> Any:
    """The contents of a pickled file (``pytorch_model.bin``, ``optimizer.pt``, ...), read with
    ``torch.load(weights_only=True)``: tensors and plain values only, never arbitrary objects. This is
    the only place enstack unpickles. A file it cannot read raises ``error`` naming it, then ``advice``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise error(f"cannot read '{path}' with torch.load(weights_only=True): {e}. {advice}".rstrip()) from e


def _read_pickled_weights(path: Path) -> Mapping[str, torch.Tensor]:
    if not (path / "config.json").exists():
        raise ModelError(f"no config.json in '{path}'; a Hugging Face model directory needs one.")
    state = load_pickled(path / "pytorch_model.bin", ModelError, "The file is corrupted or holds more than tensors; "
                         "re-download it or convert it to model.safetensors.")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"'{path / 'pytorch_model.bin'}' does not hold a name -> tensor mapping.")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def from_config(config: Union[Mapping, PathLike], num_labels: Optional[int] = None) -> EncoderClassifier:
    """A freshly initialised model for a config.json (a mapping or a path)."""
    if isinstance(config, Mapping):
        text = json.dumps(dict(config))
    else:
        text = Path(config).read_text()
    return _C.model.from_config(text, num_labels)


def config_of(model: EncoderClassifier) -> dict:
    """The config.json that ``model.save_pretrained`` writes, as a dict."""
    return json.loads(model.config_json())
