"""The run configuration: schema (frozen dataclasses), YAML loading, validation.

A config is YAML with four sections, ``run``, ``model``, ``data`` and ``train``.
``load_config`` composes files (``include:`` and lists of files, deep-merged left
to right), applies dotted overrides, resolves relative paths and validates,
reporting every problem at once in one ``enstack.ConfigError``. The type and
rule checks live in ``_config_validate``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from enstack import _config_validate as _v
from enstack._C import ConfigError

__all__ = [
    "Config",
    "DataConfig",
    "EarlyStoppingConfig",
    "ENSTACK5_LABELS",
    "ModelConfig",
    "RunConfig",
    "SwaConfig",
    "TokenizerConfig",
    "TrainConfig",
    "load_config",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The five VDISC classes of the EnStack paper, in label-index order.
ENSTACK5_LABELS = _v.ENSTACK5_LABELS
#: ``data.train: demo`` means the embedded synthetic data set, generated under <output_dir>/data/.
DEMO_DATA = _v.DEMO_DATA

LogLevel = Literal["trace", "debug", "info", "warning", "error", "off"]
TokenizerKind = Literal["auto", "bpe", "sentencepiece"]
DataFormat = Literal["auto", "vdisc_hdf5", "csv", "jsonl", "parquet", "pickle"]
LabelPolicy = Literal["enstack5", "binary", "multilabel", "class"]
LrSchedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
EvalStrategy = Literal["steps", "epoch"]
Metric = Literal["loss", "accuracy", "precision_macro", "precision_weighted", "recall_macro",
                 "recall_weighted", "f1_macro", "f1_micro", "f1_weighted", "mcc", "auc_macro",
                 "auc_weighted"]
ModelDtype = Literal["fp32", "fp16", "bf16"]


def _f(default: Any, doc: str) -> Any:
    """A field with its documentation in ``metadata["doc"]`` (shown by ``enstack`` help)."""
    return field(default=default, metadata={"doc": doc})


def _sub(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


class _Section:
    """Shared behaviour of the config sections: dict/YAML views."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def __str__(self) -> str:
        return self.to_yaml()


def _plain(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RunConfig(_Section):
    """Where the run writes, and how it uses the machine."""

    name: str = _f("enstack", "Run name, shown in logs and TensorBoard.")
    output_dir: str = _f("runs/enstack", "Run directory (checkpoints/, logs/, metrics/). A relative path "
                         "is resolved against the directory of the top-level config file.")
    mirror_dir: Optional[str] = _f(None, "A second home for checkpoints (e.g. a Google Drive folder), "
                                   "copied and verified in the background; resume takes the newest "
                                   "valid checkpoint of the two. null: none.")
    mirror_lease_seconds: float = _f(60.0, "The mirror is leased to one training process, renewed every quarter of "
                                     "this; a lease without a heartbeat for this long is stale and a new "
                                     "runtime takes it over (sooner: `--take-over-mirror`).")
    seed: int = _f(42, "Seed of weights init, shuffling and dropout; batch order is a function of it.")
    num_threads: int = _f(0, "CPU intra-op threads; 0: all cores.")
    device: str = _f("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    log_level: LogLevel = _f("info", "trace, debug, info, warning, error or off.")


@dataclass(frozen=True)
class TokenizerConfig(_Section):
    """Which tokenizer turns source code into ids."""

    kind: TokenizerKind = _f("auto", "auto: the tokenizer files of model.name_or_path (or of path); "
                             "bpe (byte-level) or sentencepiece: trained on the training split when "
                             "path is null, else read from path.")
    vocab_size: Optional[int] = _f(None, "Vocabulary size of a tokenizer trained here (bpe, sentencepiece).")
    path: Optional[str] = _f(None, "Directory or file with tokenizer files; null: those of name_or_path.")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The encoder and its classification head."""

    name_or_path: str = _f("microsoft/codebert-base", "A Hugging Face model id, a local model directory, "
                           "or (with from_scratch) a config.json. Relative local paths are resolved "
                           "against the top-level config file's directory.")
    num_labels: Optional[int] = _f(None, "Classes of the head; null: from data.label_policy (enstack5: 5, "
                                   "binary: 2, multilabel: one per label column, class: label_names or "
                                   "the data).")
    max_length: int = _f(512, "Tokens per function (longer ones are truncated); at most the model's "
                         "position limit (512 for CodeBERT/GraphCodeBERT, 1024 for UniXcoder).")
    dropout: Optional[float] = _f(None, "Dropout of encoder and head; null: the model config's own.")
    from_scratch: bool = _f(False, "Initialise weights randomly from the model config instead of loading them.")
    tokenizer: TokenizerConfig = _sub(TokenizerConfig, "Tokenizer: {kind, vocab_size, path}.")


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where the functions and labels come from, and how they are split."""

    format: DataFormat = _f("auto", "auto (by file extension), vdisc_hdf5, csv, jsonl, parquet or pickle.")
    train: Optional[str] = _f(None, "Training file; 'demo': the embedded synthetic data set, generated "
                              "deterministically under <output_dir>/data/ (use with split).")
    validation: Optional[str] = _f(None, "Validation file; must be null when split is given.")
    test: Optional[str] = _f(None, "Test file (optional); must be null when split is given.")
    text_column: str = _f("functionSource", "Column (HDF5 dataset) holding the function source.")
    label_columns: Tuple[str, ...] = _f(ENSTACK5_LABELS, "Label column(s); one for label_policy column.")
    label_policy: LabelPolicy = _f("enstack5", "enstack5: the five VDISC CWE classes of the paper; binary: "
                                   "vulnerable or not; multilabel: one output per label column; class: "
                                   "a single column holding the class.")
    label_names: Optional[Tuple[str, ...]] = _f(None, "Class names in label-index order; null: from the policy.")
    group_by_length: bool = _f(False, "Batch functions of similar length together (faster, same epochs).")
    split: Optional[Tuple[float, ...]] = _f(None, "[train, validation, test] ratios (sum 1) splitting the one "
                                            "file in data.train; null: separate files.")
    group_column: Optional[str] = _f(None, "With split: rows sharing this column's value stay in one split.")
    id_column: Optional[str] = _f(None, "Column with a row id, carried into predictions; null: row index.")
    downsample: Optional[Union[Literal["paper"], Dict[str, int]]] = _f(
        None, "null: all rows; 'paper': the EnStack paper's class counts; or a mapping class -> count "
        "applied to the training split.")
    max_bad_share: float = _f(0.01, "Largest share of unreadable or unlabelled rows that are skipped "
                              "(with a warning) before ingestion fails.")
    trust_pickle: bool = _f(False, "Allow reading pickle files, which can run code; must be true for pickle.")
    num_workers: int = _f(0, "Threads for tokenization and ingestion; 0: all cores.")


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """Stop when metric_for_best has not improved for a while."""

    patience: Optional[int] = _f(None, "Evaluations without improvement before stopping; null: never stop early.")
    threshold: float = _f(0.0, "Smallest change of metric_for_best that counts as an improvement.")


@dataclass(frozen=True)
class SwaConfig(_Section):
    """Stochastic weight averaging (saved to checkpoints/swa/)."""

    enabled: bool = _f(False, "Keep a running average of the weights.")
    start_epoch: Optional[int] = _f(None, "First epoch (1-based) that is averaged; null: the last quarter "
                                    "of training (epoch epochs * 3 // 4 + 1).")
    every_steps: Optional[int] = _f(None, "Average every N optimizer steps; null: at the end of each epoch.")
    lr: Optional[float] = _f(None, "Constant learning rate while averaging; null: keep the schedule.")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Optimisation (AdamW), evaluation, checkpointing."""

    epochs: int = _f(10, "Passes over the training data.")
    batch_size: int = _f(16, "Functions per forward pass (per device).")
    grad_accum: int = _f(1, "Forward passes per optimizer step; the effective batch is batch_size * grad_accum.")
    learning_rate: float = _f(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.01, "AdamW decoupled weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = _f(0.0, "Share of all optimizer steps spent warming up; exclusive with warmup_steps.")
    warmup_steps: int = _f(0, "Optimizer steps spent warming up; exclusive with warmup_ratio.")
    lr_schedule: LrSchedule = _f("linear", "linear (decay to 0), cosine or constant, each after warmup.")
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this; 0: no clipping.")
    precision: Precision = _f("auto", "auto (fp32 on CPU, fp16 on CUDA), fp32, bf16 or fp16 (with a loss "
                                  "scaler; on the CPU only fast where it has FP16 units: prefer bf16 there).")
    loss_scale: float = _f(65536.0, "fp16 only: the loss scaler's initial scale (torch.amp.GradScaler's "
                           "init_scale); it halves on every overflow and doubles after 2000 clean steps.")
    deterministic: bool = _f(False, "torch's deterministic algorithms (and cuDNN's, and the cuBLAS workspace "
                             "setting) for the fit: a resumed CUDA run then ends bitwise equal to an "
                             "uninterrupted one, at the cost of slower kernels. CPU training is deterministic "
                             "without it.")
    auto_microbatch: bool = _f(True, "On out of memory, run each batch as twice as many micro-batches for the "
                               "rest of the run (same global batch and update, recorded in checkpoints) "
                               "instead of stopping with advice.")
    eval_strategy: EvalStrategy = _f("epoch", "Evaluate at the end of each epoch or every eval_steps steps.")
    eval_steps: Optional[int] = _f(None, "Optimizer steps between evaluations; required for eval_strategy steps.")
    save_steps: Optional[int] = _f(None, "Optimizer steps between checkpoints; null: at every evaluation.")
    save_minutes: Optional[float] = _f(None, "Also checkpoint at the first step boundary this many minutes of wall "
                                       "time after the last save (Colab users lose time, not steps); null: off.")
    save_total_limit: Optional[int] = _f(2, "step-* checkpoints kept (last/, best/ always are); null: all.")
    logging_steps: int = _f(50, "Optimizer steps between log records (and Python callbacks).")
    metric_for_best: Optional[Metric] = _f("f1_weighted", "Metric choosing checkpoints/best/ and driving "
                                           "early stopping; null: no best-model tracking.")
    greater_is_better: Optional[bool] = _f(None, "Direction of metric_for_best; null: false for loss, else true.")
    early_stopping: EarlyStoppingConfig = _sub(EarlyStoppingConfig, "Early stopping: {patience, threshold}.")
    swa: SwaConfig = _sub(SwaConfig, "Stochastic weight averaging: {enabled, start_epoch, every_steps, lr}.")
    save_coalesce: bool = _f(True, "When a checkpoint is due while the previous one is still being written "
                             "(slow Drive), skip the stale one instead of queueing it.")
    best_model_dtype: ModelDtype = _f("fp32", "dtype of the weights saved in checkpoints/best/.")

    def metric_greater_is_better(self) -> bool:
        """greater_is_better with its default filled in."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return self.metric_for_best != "loss"


# Dotted keys that do not change what is learned: excluded from Config.fingerprint().
# Data file paths are covered by the dataset fingerprint stored in checkpoints.
_NOT_FINGERPRINTED = frozenset({
    "run.name", "run.output_dir", "run.mirror_dir", "run.mirror_lease_seconds", "run.num_threads", "run.device", "run.log_level",
    "data.format", "data.train", "data.validation", "data.test", "data.id_column", "data.max_bad_share",
    "data.trust_pickle", "data.num_workers", "train.save_steps", "train.save_minutes", "train.save_total_limit", "train.auto_microbatch", "train.deterministic",
    "train.logging_steps", "train.save_coalesce", "train.best_model_dtype",
})


@dataclass(frozen=True)
class Config(_Section):
    """A whole run configuration. Build it with ``load_config`` or ``Config.from_dict``."""

    run: RunConfig = _sub(RunConfig, "Run directory, seed, device, logging.")
    model: ModelConfig = _sub(ModelConfig, "Encoder, head, tokenizer.")
    data: DataConfig = _sub(DataConfig, "Data files, columns, labels, splits.")
    train: TrainConfig = _sub(TrainConfig, "Optimisation, evaluation, checkpoints.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], validate: bool = True, source: str = "") -> "Config":
        """A Config from a nested mapping; missing keys take defaults.

        Raises ``ConfigError`` listing every unknown key and wrongly typed value (and,
        with ``validate``, every rule ``validate`` checks).
        """
        problems = _v.Problems()
        config = _v.parse(cls, d, "", problems)
        if validate:
            _v.check(config, problems)
        problems.raise_if_any(source)
        return config

    def problems(self) -> List[str]:
        """Every rule this config breaks, as 'dotted.key: message' lines (empty when valid)."""
        problems = _v.Problems()
        _v.check(self, problems)
        return problems.lines()

    def validate(self) -> "Config":
        """Raises one ``ConfigError`` listing every problem; returns self when valid."""
        problems = _v.Problems()
        _v.check(self, problems)
        problems.raise_if_any("")
        return self

    def with_overrides(self, overrides: Union[Mapping[str, Any], Sequence[str]]) -> "Config":
        """A validated copy with dotted overrides applied (as in ``load_config``)."""
        merged = _deep_merge(self.to_dict(), _overrides_tree(overrides))
        return Config.from_dict(merged, source="overrides")

    def fingerprint(self) -> str:
        """sha256 of the fields that change what is learned (not paths, logging, devices)."""
        flat = {k: v for k, v in _flatten(self.to_dict()).items() if k not in _NOT_FINGERPRINTED}
        canonical = json.dumps(flat, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "data.downsample":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


# ---------------------------------------------------------------- loading


def load_config(paths: Union[PathLike, Sequence[PathLike]],
                overrides: Optional[Union[Mapping[str, Any], Sequence[str]]] = None) -> Config:
    """Loads, composes and validates YAML config files.

    ``paths`` (one or a list) compose left to right: mappings deep-merge, lists and
    scalars are replaced. A file may ``include:`` others (relative to itself), which
    come first. ``overrides`` (``{"train.epochs": 3}`` or ``["train.epochs=3"]``) go
    last. Relative paths inside a file resolve against that top-level file's
    directory; relative paths in overrides against the current directory.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not files:
        raise ConfigError("load_config needs at least one config file, got an empty list.")
    merged: Dict[str, Any] = {}
    for path in files:
        top = Path(os.path.expanduser(os.fspath(path)))
        tree = _load_with_includes(top, ())
        merged = _deep_merge(merged, _resolve_paths(tree, top.absolute().parent))
    if overrides:
        merged = _deep_merge(merged, _overrides_tree(overrides))
    return Config.from_dict(merged, source=", ".join(os.fspath(p) for p in files))


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML would silently keep the last)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: Dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist (looked at '{path.absolute()}'); "
                          "check the path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file '{path}': {e}.") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {_yaml_error(e)}. "
                          "Fix the syntax at that line.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (run, model, data, "
                          f"train), not a {type(data).__name__}.")
    return data


def _yaml_error(e: yaml.YAMLError) -> str:
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem is None or mark is None:
        return str(e)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    return text


def _load_with_includes(path: Path, chain: Tuple[Path, ...]) -> Dict[str, Any]:
    key = path.absolute()
    if key in chain:
        cycle = " -> ".join(str(p) for p in (*chain, key))
        raise ConfigError(f"include cycle: {cycle}. Remove one of these include: entries.")
    data = _read_yaml(path)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"'{path}': include must be a file name or a list of file names, got {includes!r}.")
    merged: Dict[str, Any] = {}
    for name in includes:
        target = key.parent / os.path.expanduser(name)
        if not target.exists():
            raise ConfigError(f"'{path}' includes '{name}', which does not exist (looked at '{target}').")
        merged = _deep_merge(merged, _load_with_includes(target, (*chain, key)))
    return _deep_merge(merged, data)


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _overrides_tree(overrides: Union[Mapping[str, Any], Sequence[str]]) -> Dict[str, Any]:
    """Dotted overrides as a nested mapping, with paths resolved against the current directory."""
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(_parse_override, overrides)
    tree: Dict[str, Any] = {}
    for dotted, value in pairs:
        node = tree
        *parents, leaf = str(dotted).split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}' goes inside '{part}', which an earlier override set "
                                  "to a value.")
        if isinstance(value, Mapping):
            value = _deep_merge(node.get(leaf) if isinstance(node.get(leaf), dict) else {}, copy.deepcopy(value))
        node[leaf] = value
    return _resolve_paths(tree, Path.cwd())


def _parse_override(text: str) -> Tuple[str, Any]:
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=3).")
    key, _, raw = text.partition("=")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None  # noqa: S506
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': the value is not a YAML scalar or list: {_yaml_error(e)}.") from None
    return key.strip(), value


# (section, key) pairs holding file-system paths; name_or_path only when the path exists.
_PATH_KEYS = (("run", "output_dir"), ("run", "mirror_dir"), ("data", "train"), ("data", "validation"),
              ("data", "test"))


def _resolve_paths(tree: Dict[str, Any], base: Path) -> Dict[str, Any]:
    """A copy of ``tree`` with relative path values made absolute against ``base``."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for section, key in _PATH_KEYS:
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, (str, os.PathLike)) and value and not (section == "data" and value == DEMO_DATA):
            out[section][key] = _absolute(value, base)
    model = out.get("model")
    if isinstance(model, dict):
        name = model.get("name_or_path")
        if isinstance(name, (str, os.PathLike)) and name:
            local = _absolute(name, base)
            model["name_or_path"] = local if os.path.exists(local) else os.path.expanduser(name)
        tokenizer = model.get("tokenizer")
        if isinstance(tokenizer, dict) and isinstance(tokenizer.get("path"), (str, os.PathLike)) and tokenizer["path"]:
            model["tokenizer"] = {**tokenizer, "path": _absolute(tokenizer["path"], base)}
    return out


def _absolute(value: PathLike, base: Path) -> str:
    # normpath, not resolve(): keep symlinked mounts (Drive) as the user wrote them.
    return os.path.normpath(os.path.join(base, os.path.expanduser(os.fspath(value))))
