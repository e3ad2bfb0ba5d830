"""The stacking experiment's configuration: which base models, which meta-classifiers, which protocol.

A stacking config is YAML with two sections, ``run`` (the same keys as a training
run's: name, output_dir, seed, ...) and ``stack``. Each base model is named and
points at its own training config file(s), so the base models keep their own
data, tokenizer and run directory; the stacking run only reads their checkpoints
and writes results, meta-models and plots under its own ``run.output_dir``.
Loading reuses the training config's YAML composition (``include:``, lists of files,
dotted overrides) and its parser, so errors read the same.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

from enstack._C import ConfigError
from enstack.config import validate as _v
from enstack.config.loading import (PathLike, absolute_path, deep_merge, load_config, load_with_includes,
                                    overrides_tree, resolve_paths)
from enstack.config.schema import Config, RunConfig, Section, doc_field, section_field
from enstack.trainer import checkpoint_choice

__all__ = ["META_CLASSIFIERS", "StackConfig", "StackSection", "load_stack_config"]

MetaName = Literal["lr", "svm", "rf", "xgboost"]
#: The paper's four meta-classifiers, in the order of its tables.
META_CLASSIFIERS: Tuple[str, ...] = ("lr", "svm", "rf", "xgboost")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SelectBy = Literal["accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro",
                   "auc_weighted", "auc_macro"]


@dataclass(frozen=True)
class StackSection(Section):
    """Base models, meta-classifiers and the protocol that keeps them honest."""

    base_models: Dict[str, Union[str, Tuple[str, ...]]] = field(default_factory=dict, metadata={"doc": (
        "Base models: name -> its training config file (or a list of files composed left to right), "
        "relative to this file. Names are letters, digits, '_', '.', '-' (e.g. CodeBERT).")})
    meta_classifiers: Tuple[MetaName, ...] = doc_field(META_CLASSIFIERS, "Meta-classifiers with the paper's settings: "
                                                "lr, svm, rf, xgboost.")
    protocol: Literal["paper", "oof"] = doc_field("paper", "paper: meta-classifiers learn from validation-set "
                                           "predictions and are scored on test (the paper's Algorithm 1); "
                                           "oof: K-fold out-of-fold predictions over train+validation.")
    folds: int = doc_field(5, "K of the oof protocol (base models are fine-tuned K times).")
    features: Literal["probabilities", "logits", "both"] = doc_field("probabilities", "Meta-features: the base "
                                                              "models' class probabilities (the paper), logits, or both.")
    checkpoint: Literal["auto", "best", "final", "last", "swa"] = doc_field("auto", "Base-model weights that predict: best, "
                                                             "final or swa; auto: best for paper, final for oof.")
    select_by: SelectBy = doc_field("f1_weighted", "Metric that marks the best row of the results table.")
    train_base_models: bool = doc_field(True, "Train (or resume) base models first; false: fail when a checkpoint is missing.")
    predict_batch_size: int = doc_field(0, "Batch size for base-model inference; 0: the base model's train.batch_size.")
    plots: bool = doc_field(True, "Write confusion-matrix and ROC plots (PNG).")

    def resolved_checkpoint(self) -> str:
        """checkpoint with auto filled in."""
        if self.checkpoint != "auto":
            return checkpoint_choice(self.checkpoint)
        return "final" if self.protocol == "oof" else "best"


@dataclass(frozen=True)
class StackConfig(Section):
    """A whole stacking experiment. Build it with ``load_stack_config`` or ``StackConfig.from_dict``."""

    run: RunConfig = section_field(RunConfig, "Stacking run directory, seed (of folds and meta-classifiers), threads.")
    stack: StackSection = section_field(StackSection, "Base models, meta-classifiers, protocol.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "") -> "StackConfig":
        problems = _v.Problems()
        config = _v.parse(cls, d, "", problems)
        _check(config, problems)
        problems.raise_if_any(source)
        return config

    def base_configs(self) -> Dict[str, Config]:
        """Each base model's training Config, loaded from its file(s)."""
        out = {}
        for name, files in self.stack.base_models.items():
            try:
                out[name] = load_config(list(files) if isinstance(files, tuple) else files)
            except ConfigError as e:
                raise ConfigError(f"base model '{name}' (stack.base_models.{name}): {e}") from None
        return out


def _check(cfg: StackConfig, p: _v.Problems) -> None:
    run, s = cfg.run, cfg.stack
    p.require(bool(run.name), "run.name", "must not be empty")
    p.require(bool(run.output_dir), "run.output_dir", "must not be empty")
    p.require(run.seed >= 0, "run.seed", f"must be >= 0, got {run.seed}")
    p.require(run.num_threads >= 0, "run.num_threads", f"must be >= 0 (0: all cores), got {run.num_threads}")
    p.require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", run.device) is not None, "run.device",
              f"must be auto, cpu, cuda or cuda:N, got {run.device!r}")
    p.require(bool(s.base_models), "stack.base_models",
              "required: name -> training config file of each base model, e.g. {CodeBERT: codebert.yaml}")
    for name, files in s.base_models.items():
        key = f"stack.base_models.{name}"
        if not _NAME.fullmatch(name):
            p.add(key, "a name must be letters, digits, '_', '.' or '-' (it names files and table rows)")
            continue
        for f in (files if isinstance(files, tuple) else (files,)):
            if not Path(f).is_file():
                p.add(key, f"config file '{f}' does not exist; paths are relative to the stacking config's directory")
                break
    p.require(bool(s.meta_classifiers), "stack.meta_classifiers", f"name at least one of {', '.join(META_CLASSIFIERS)}")
    p.require(len(set(s.meta_classifiers)) == len(s.meta_classifiers), "stack.meta_classifiers",
              "lists a meta-classifier twice")
    if s.protocol == "oof":
        p.require(s.folds >= 2, "stack.folds", f"must be >= 2 for the oof protocol, got {s.folds}")
        p.require(s.checkpoint != "best", "stack.checkpoint",
                  "best cannot be used with oof: choosing a fold model's best checkpoint by its held-out fold's "
                  "labels leaks that fold into its predictions; use final (or swa), or auto")
    p.require(s.predict_batch_size >= 0, "stack.predict_batch_size", f"must be >= 0, got {s.predict_batch_size}")


# ---------------------------------------------------------------- loading


def load_stack_config(paths: Union[PathLike, Sequence[PathLike]],
                      overrides: Optional[Union[Mapping[str, Any], Sequence[str]]] = None) -> StackConfig:
    """Loads, composes and validates stacking config files (as ``enstack.load_config`` does).

    Base-model config paths inside a file resolve against that top-level file's
    directory, those in overrides against the current directory.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise ConfigError("load_stack_config needs at least one config file, got an empty list.")
    merged: Dict[str, Any] = {}
    for path in files:
        top = Path(os.path.expanduser(os.fspath(path)))
        base = top.absolute().parent
        tree = _resolve_base_models(resolve_paths(load_with_includes(top), base), base)
        merged = deep_merge(merged, tree)
    if overrides:
        merged = deep_merge(merged, _resolve_base_models(overrides_tree(overrides), Path.cwd()))
    if "stack" not in merged:
        raise ConfigError(f"{', '.join(map(str, files))} has no stack section, so it is not a stacking config "
                          "(a training config goes to `enstack train`). See configs/demo-stack.yaml.")
    return StackConfig.from_dict(merged, source=", ".join(os.fspath(p) for p in files))


def _resolve_base_models(tree: Dict[str, Any], base: Path) -> Dict[str, Any]:
    stack = tree.get("stack")
    if not isinstance(stack, dict) or not isinstance(stack.get("base_models"), dict):
        return tree

    def resolve(value: Any) -> Any:
        if isinstance(value, (str, os.PathLike)) and value:
            return absolute_path(value, base)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    models = {name: resolve(files) for name, files in stack["base_models"].items()}
    return {**tree, "stack": {**stack, "base_models": models}}
