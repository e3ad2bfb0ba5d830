"""Checks for ``enstack.config``: parsing mappings into the typed sections, then rules.

Every problem is collected under its dotted key so that one ``ConfigError`` can
list them all; the first problem reported for a key (or a section holding it)
wins, so a value that failed to parse is not complained about again by a rule.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from enstack._C import ConfigError
from enstack.config.schema import DEMO_DATA, ENSTACK5_LABELS

if TYPE_CHECKING:  # pragma: no cover
    from enstack.config.schema import Config, DataConfig, ModelConfig, TrainConfig

_NONE = type(None)
# Position limits of the paper's models, for ids not (yet) on disk.
_KNOWN_LIMITS = {"microsoft/codebert-base": 512, "microsoft/graphcodebert-base": 512,
                 "microsoft/unixcoder-base": 1024}
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")


class Problems:
    """Problems found so far, one per dotted key."""

    def __init__(self) -> None:
        self._items: Dict[str, str] = {}

    def add(self, key: str, message: str) -> None:
        if not any(key == k or key.startswith(k + ".") for k in self._items):
            self._items[key] = message

    def require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.add(key, message)

    def lines(self) -> List[str]:
        return [f"{key}: {message}" for key, message in self._items.items()]

    def raise_if_any(self, source: str) -> None:
        if not self._items:
            return
        where = f" ({source})" if source else ""
        count = f"{len(self._items)} problem{'s' if len(self._items) > 1 else ''}"
        body = "\n".join(f"  - {line}" for line in self.lines())
        raise ConfigError(f"invalid configuration{where}, {count}:\n{body}\n"
                          "Fix these keys in the YAML file or override them (e.g. `--set train.batch_size=8`).")


# ---------------------------------------------------------------- parsing


class _Bad(ValueError):
    pass


def parse(cls: type, data: Any, prefix: str, problems: Problems) -> Any:
    """An instance of dataclass ``cls`` from ``data``; bad entries are reported and left at defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        problems.add(prefix or "<top level>", f"expected a mapping of keys, got {_short(data)}")
        return cls()
    hints = _hints(cls)
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            problems.add(dotted, _unknown_key(str(key), list(hints), prefix))
        elif dataclasses.is_dataclass(hints[key]):
            kwargs[key] = parse(hints[key], value, dotted, problems)
        else:
            try:
                kwargs[key] = coerce(value, hints[key])
            except _Bad as e:
                problems.add(dotted, str(e))
    return cls(**kwargs)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def _key_index() -> Dict[str, str]:
    """Leaf key name -> its dotted key, over the whole schema (first wins)."""
    from enstack.config.schema import Config

    index: Dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in _hints(cls).items():
            index.setdefault(name, prefix + name)
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{name}.")

    walk(Config, "")
    return index


def _unknown_key(key: str, valid: List[str], prefix: str) -> str:
    elsewhere = _key_index().get(key)
    if elsewhere and elsewhere != (f"{prefix}.{key}" if prefix else key):
        return f"unknown key here; did you mean '{elsewhere}'?"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean '{close[0]}'?"
    return f"unknown key; valid keys here: {', '.join(valid)}"


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to annotation ``tp``, or ``_Bad`` saying what was expected."""
    origin = typing.get_origin(tp)
    if origin is Union:
        return _coerce_union(value, tp)
    if origin is Literal:
        return _coerce_choice(value, typing.get_args(tp))
    if origin is tuple:
        return _coerce_list(value, typing.get_args(tp)[0])
    if origin is dict:
        return _coerce_mapping(value, typing.get_args(tp)[1])
    return _SCALARS[tp](value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Bad(f"expected true or false, got {_short(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Bad(f"expected an integer, got {_short(value)}")


def _to_float(value: Any) -> float:
    # YAML 1.1 reads `2e-5` (no dot) as a string; accept any text float() reads.
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise _Bad(f"expected a number, got {_short(value)}")
    return number


def _to_str(value: Any) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Bad(f"expected a string, got {_short(value)}")


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _coerce_union(value: Any, tp: Any) -> Any:
    members = [m for m in typing.get_args(tp) if m is not _NONE]
    if value is None:
        if len(members) < len(typing.get_args(tp)):
            return None
        raise _Bad(f"must not be null; expected {_describe(tp)}")
    errors = []
    for member in members:
        try:
            return coerce(value, member)
        except _Bad as e:
            errors.append((member, e))
    for member, error in errors:
        if _same_kind(value, member):
            raise error
    raise _Bad(f"expected {_describe(tp)}, got {_short(value)}")


def _coerce_choice(value: Any, choices: Tuple[str, ...]) -> str:
    if isinstance(value, str) and value in choices:
        return value
    message = f"must be one of {', '.join(repr(c) for c in choices)}; got {_short(value)}"
    close = difflib.get_close_matches(str(value).lower(), choices, n=1, cutoff=0.6)
    raise _Bad(message + (f" (did you mean '{close[0]}'?)" if close else ""))


def _coerce_list(value: Any, item: Any) -> Tuple[Any, ...]:
    if isinstance(value, str) and item is str:
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"expected {_describe(Tuple[item, ...])}, got {_short(value)}")
    out = []
    for i, v in enumerate(value):
        try:
            out.append(coerce(v, item))
        except _Bad as e:
            raise _Bad(f"item {i}: {e}") from None
    return tuple(out)


def _coerce_mapping(value: Any, item: Any) -> Dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Bad(f"expected {_describe(Dict[str, item])}, got {_short(value)}")
    out = {}
    for k, v in value.items():
        try:
            out[str(k)] = coerce(v, item)
        except _Bad as e:
            raise _Bad(f"'{k}': {e}") from None
    return out


def _same_kind(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Literal or tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, Mapping)
    if tp is float:
        return isinstance(value, (int, float, str)) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else False


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join("null" if a is _NONE else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if origin is dict:
        return f"a mapping of name to {_describe(args[1]).split(' ', 1)[1]}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- rules


def check(cfg: "Config", p: Problems) -> None:
    """Adds every range, enum and cross-field problem of ``cfg`` to ``p``."""
    _check_run(cfg, p)
    _check_model(cfg.model, p)
    _check_model_files(cfg.model, p)
    _check_data(cfg.data, p)
    _check_labels(cfg, p)
    _check_train(cfg.train, p)
    _check_schedule(cfg.train, p)
    _check_tracking(cfg.train, p)


def _check_run(cfg: "Config", p: Problems) -> None:
    run = cfg.run
    p.require(bool(run.name), "run.name", "must not be empty")
    p.require(bool(run.output_dir), "run.output_dir", "must not be empty")
    p.require(run.mirror_dir != "", "run.mirror_dir", "must not be empty; use null for no mirror")
    p.require(run.mirror_lease_seconds > 0, "run.mirror_lease_seconds", f"must be > 0, got {run.mirror_lease_seconds}")
    p.require(run.dist_timeout_seconds > 0, "run.dist_timeout_seconds", f"must be > 0, got {run.dist_timeout_seconds}")
    p.require(run.seed >= 0, "run.seed", f"must be >= 0, got {run.seed}")
    p.require(run.num_threads >= 0, "run.num_threads", f"must be >= 0 (0: all cores), got {run.num_threads}")
    p.require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", run.device) is not None, "run.device",
              f"must be auto, cpu, cuda or cuda:N, got {run.device!r}")
    if cfg.train.precision == "fp16" and run.device == "cpu":
        p.require(cpu_fp16_autocast_available(), "train.precision",
                  "fp16 on the CPU needs a torch whose CPU autocast supports float16 (torch >= 2.4); use fp32 or "
                  "bf16 on CPU, or device auto/cuda")


def cpu_fp16_autocast_available() -> bool:
    """Whether the installed torch runs CPU autocast in float16 (older builds disable it with a warning)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16


def _check_model(m: "ModelConfig", p: Problems) -> None:
    p.require(bool(m.name_or_path), "model.name_or_path", "must not be empty (e.g. microsoft/codebert-base)")
    if m.num_labels is not None:
        p.require(m.num_labels >= 2, "model.num_labels", f"must be >= 2 or null, got {m.num_labels}")
    p.require(8 <= m.max_length <= 4096, "model.max_length", f"must be in 8..4096, got {m.max_length}")
    if m.dropout is not None:
        p.require(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1) or null, got {m.dropout}")
    tok = m.tokenizer
    if tok.vocab_size is not None:
        p.require(tok.vocab_size >= 100, "model.tokenizer.vocab_size", f"must be >= 100, got {tok.vocab_size}")
    if tok.kind != "auto" and tok.path is None:
        p.require(tok.vocab_size is not None, "model.tokenizer.vocab_size",
                  f"required to train a {tok.kind} tokenizer (model.tokenizer.path is null), e.g. 2000 "
                  "for small data or 50265 like RoBERTa")
    p.require(tok.path != "", "model.tokenizer.path", "must not be empty; use null for name_or_path's files")


def _check_model_files(m: "ModelConfig", p: Problems) -> None:
    name = m.name_or_path
    local = name.startswith(("/", "./", "../", "~")) or name.endswith(".json")
    if local and not Path(name).expanduser().exists():
        p.add("model.name_or_path", f"'{name}' does not exist; give an existing model directory, a config.json "
              "(with from_scratch), or a Hugging Face id like microsoft/codebert-base")
        return
    if name.endswith(".json"):
        p.require(m.from_scratch, "model.from_scratch",
                  "must be true when model.name_or_path is a config.json (it has no weights); or give a "
                  "model directory or id")
        p.require(m.tokenizer.kind != "auto" or m.tokenizer.path is not None, "model.tokenizer.kind",
                  "a config.json has no tokenizer files; set kind to bpe or sentencepiece (trained on the "
                  "training split) or set model.tokenizer.path")
    try:
        limit = position_limit(name)
    except _Bad as e:
        p.add("model.name_or_path", str(e))
        return
    if limit is not None:
        p.require(m.max_length <= limit[0], "model.max_length",
                  f"{m.max_length} exceeds the position limit of {name} ({limit[1]}); use at most {limit[0]}")


def position_limit(name_or_path: str) -> Optional[Tuple[int, str]]:
    """(longest usable max_length, how it was derived) for a local model config or a known id."""
    path = Path(name_or_path).expanduser()
    config_file = path / "config.json" if path.is_dir() else path
    if not (config_file.suffix == ".json" and config_file.is_file()):
        known = _KNOWN_LIMITS.get(name_or_path)
        return (known, f"{known} positions") if known else None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _Bad(f"cannot read '{config_file}': {e}; the model config must be valid JSON") from None
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if not isinstance(positions, int):
        return None
    if config.get("model_type") in _ROBERTA_TYPES:
        pad = config.get("pad_token_id", 1)
        pad = pad if isinstance(pad, int) else 1
        return positions - pad - 1, f"RoBERTa: max_position_embeddings {positions} - pad_token_id {pad} - 1"
    if config.get("model_type") == "bert":
        return positions, f"BERT: max_position_embeddings {positions}"
    return None


def _check_data(d: "DataConfig", p: Problems) -> None:
    p.require(d.train is not None, "data.train", "required: a data file, or 'demo' for the embedded synthetic data")
    if d.split is not None:
        _check_split(d.split, p)
        p.require(d.validation is None, "data.validation",
                  "must be null when data.split is given (split divides data.train)")
        p.require(d.test is None, "data.test", "must be null when data.split is given (split divides data.train)")
    elif d.train == DEMO_DATA:
        p.add("data.split", "required with data.train: demo, e.g. [0.8, 0.1, 0.1]")
    else:
        p.require(d.validation is not None, "data.validation",
                  "required for evaluation and best-model selection; give a file, or set data.split "
                  "to split data.train")
    if d.train == DEMO_DATA:
        p.require(d.format in ("auto", "jsonl"), "data.format",
                  f"the demo data is JSONL; set auto or jsonl, not {d.format!r}")
    files = [f for f in (d.train, d.validation, d.test) if f]
    pickled = d.format == "pickle" or (d.format == "auto" and any(f.endswith((".pkl", ".pickle")) for f in files))
    if pickled:
        p.require(d.trust_pickle, "data.trust_pickle",
                  "must be true to read pickle files, which can run arbitrary code when loaded; set it only "
                  "for files you trust, or convert them to parquet or jsonl")
    p.require(bool(d.text_column), "data.text_column", "must not be empty")
    p.require(0 <= d.max_bad_share < 1, "data.max_bad_share", f"must be in [0, 1), got {d.max_bad_share}")
    p.require(d.num_workers >= 0, "data.num_workers", f"must be >= 0 (0: all cores), got {d.num_workers}")


def _check_split(split: Tuple[float, ...], p: Problems) -> None:
    if len(split) != 3:
        p.add("data.split", f"must be three ratios [train, validation, test], got {list(split)}")
    elif min(split) < 0 or split[0] <= 0 or split[1] <= 0:
        p.add("data.split", f"train and validation ratios must be > 0 and test >= 0, got {list(split)}")
    elif abs(sum(split) - 1) > 1e-6:
        p.add("data.split", f"ratios must sum to 1, got {list(split)} (sum {sum(split):g})")


def _check_labels(cfg: "Config", p: Problems) -> None:
    d = cfg.data
    p.require(len(d.label_columns) >= 1, "data.label_columns", "must name at least one column")
    if d.label_policy == "class":
        p.require(len(d.label_columns) == 1, "data.label_columns",
                  f"label_policy column reads one column holding the class, got {list(d.label_columns)}")
    if d.label_policy == "multilabel":
        p.require(len(d.label_columns) >= 2, "data.label_columns",
                  "multilabel needs two or more columns; use label_policy binary for one")
    expected = {"enstack5": 5, "binary": 2, "multilabel": len(d.label_columns)}.get(d.label_policy)
    n = cfg.model.num_labels
    if n is not None and expected is not None:
        p.require(n == expected, "model.num_labels",
                  f"{n} does not match data.label_policy {d.label_policy} ({expected} classes); set {expected} "
                  "or null")
    n = n if n is not None else expected
    if d.label_names is not None:
        p.require(len(set(d.label_names)) == len(d.label_names) and all(d.label_names), "data.label_names",
                  "must be distinct, non-empty names")
        p.require(n is None or len(d.label_names) == n, "data.label_names",
                  f"{len(d.label_names)} names for {n} classes")
    _check_downsample(d, p)


def _check_downsample(d: "DataConfig", p: Problems) -> None:
    if d.downsample == "paper":
        p.require(d.label_policy == "enstack5", "data.downsample",
                  "'paper' gives counts for the five enstack5 classes; use a mapping class -> count")
    elif isinstance(d.downsample, dict):
        names = d.label_names or (ENSTACK5_LABELS if d.label_policy == "enstack5" else None)
        for name, count in d.downsample.items():
            if count < 1:
                p.add(f"data.downsample.{name}", f"must be >= 1, got {count}")
            elif names is not None and name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"classes: {', '.join(names)}"
                p.add(f"data.downsample.{name}", f"not a class; {hint}")


def _check_train(t: "TrainConfig", p: Problems) -> None:
    p.require(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    p.require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    p.require(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    p.require(0 < t.learning_rate < 1, "train.learning_rate",
              f"must be in (0, 1), got {t.learning_rate} (the paper uses 2e-5)")
    p.require(0 <= t.weight_decay < 1, "train.weight_decay", f"must be in [0, 1), got {t.weight_decay}")
    p.require(t.max_grad_norm >= 0, "train.max_grad_norm", f"must be >= 0 (0: no clipping), got {t.max_grad_norm}")
    p.require(t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}")
    p.require(math.isfinite(t.loss_scale) and t.loss_scale > 0, "train.loss_scale",
              f"must be a positive number (torch's default is 65536), got {t.loss_scale}")
    for key in ("eval_steps", "save_steps", "save_total_limit"):
        value = getattr(t, key)
        p.require(value is None or value >= 1, f"train.{key}", f"must be >= 1 or null, got {value}")
    p.require(t.save_minutes is None or (math.isfinite(t.save_minutes) and t.save_minutes > 0), "train.save_minutes",
              f"must be > 0 or null, got {t.save_minutes}")


def _check_schedule(t: "TrainConfig", p: Problems) -> None:
    p.require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {t.warmup_ratio}")
    p.require(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
    p.require(t.warmup_ratio == 0 or t.warmup_steps == 0, "train.warmup_steps",
              f"both warmup_ratio ({t.warmup_ratio}) and warmup_steps ({t.warmup_steps}) are set; set one to 0")
    swa = t.swa
    if swa.start_epoch is not None:
        p.require(1 <= swa.start_epoch <= t.epochs, "train.swa.start_epoch",
                  f"must be in 1..epochs ({t.epochs}) or null, got {swa.start_epoch}")
    if swa.every_steps is not None:
        p.require(swa.every_steps >= 1, "train.swa.every_steps", f"must be >= 1 or null, got {swa.every_steps}")
    if swa.lr is not None:
        p.require(0 < swa.lr < 1, "train.swa.lr", f"must be in (0, 1) or null, got {swa.lr}")


def _check_tracking(t: "TrainConfig", p: Problems) -> None:
    stop = t.early_stopping
    if stop.patience is not None:
        p.require(stop.patience >= 1, "train.early_stopping.patience", f"must be >= 1 or null, got {stop.patience}")
        p.require(t.metric_for_best is not None, "train.early_stopping.patience",
                  "early stopping needs train.metric_for_best; set one (e.g. f1_weighted) or patience null")
    p.require(stop.threshold >= 0, "train.early_stopping.threshold", f"must be >= 0, got {stop.threshold}")
    p.require(not (t.metric_for_best == "loss" and t.greater_is_better), "train.greater_is_better",
              "loss is better when lower; set false or null")
    if t.eval_strategy != "steps":
        return
    if t.eval_steps is None:
        p.add("train.eval_steps", "required with eval_strategy steps (e.g. 500), or use eval_strategy epoch")
    # save_steps need not be a multiple of eval_steps (the transformers Trainer's rule, where the
    # best model is picked among saved checkpoints): best/ is written at evaluation time, and a
    # checkpoint between evaluations carries the best metric and the patience counter.
