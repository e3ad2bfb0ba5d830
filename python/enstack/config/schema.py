"""The run configuration's schema: four frozen dataclass sections and their defaults.

A config has four sections, ``run``, ``model``, ``data`` and ``train``; each field
carries its documentation (``metadata["doc"]``). ``Config.from_dict`` parses and
validates (``enstack.config.validate``); YAML files are read by
``enstack.config.loading``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import yaml

from enstack._logging import LOG_LEVELS, LOG_LEVELS_TEXT

__all__ = [
    "Config",
    "DataConfig",
    "DEMO_DATA",
    "EarlyStoppingConfig",
    "ENSTACK5_LABELS",
    "LABEL_POLICIES",
    "ModelConfig",
    "NOT_FINGERPRINTED",
    "RunConfig",
    "Section",
    "SwaConfig",
    "TokenizerConfig",
    "TrainConfig",
    "doc_field",
    "flatten",
    "section_field",
]

#: The five VDISC classes of the EnStack paper, in label-index order (the one definition: data
#: ingestion, the synthetic demo data and the config default use it).
ENSTACK5_LABELS = ("CWE-119", "CWE-120", "CWE-469", "CWE-476", "CWE-other")
#: data.label_policy values: how label columns become classes.
LABEL_POLICIES = ("enstack5", "binary", "multilabel", "class")
#: ``data.train: demo`` means the embedded synthetic data set, generated under <output_dir>/data/.
DEMO_DATA = "demo"

LogLevel = Literal[LOG_LEVELS]  # type: ignore[valid-type]
TokenizerKind = Literal["auto", "bpe", "sentencepiece"]
DataFormat = Literal["auto", "vdisc_hdf5", "csv", "jsonl", "parquet", "pickle"]
LabelPolicy = Literal[LABEL_POLICIES]  # type: ignore[valid-type]
LrSchedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
EvalStrategy = Literal["steps", "epoch"]
Metric = Literal["loss", "accuracy", "precision_macro", "precision_weighted", "recall_macro",
                 "recall_weighted", "f1_macro", "f1_micro", "f1_weighted", "mcc", "auc_macro",
                 "auc_weighted"]
ModelDtype = Literal["fp32", "fp16"]  # what the native trainer writes best/ and swa/ in


def doc_field(default: Any, doc: str) -> Any:
    """A field with its documentation in ``metadata["doc"]`` (shown by ``enstack`` help)."""
    return field(default=default, metadata={"doc": doc})


def section_field(cls: type, doc: str) -> Any:
    """A nested section (a dataclass built with its defaults) with its documentation."""
    return field(default_factory=cls, metadata={"doc": doc})


class Section:
    """Shared behaviour of the config sections: dict/YAML views."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def __str__(self) -> str:
        return self.to_yaml()


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class RunConfig(Section):
    """Where the run writes, and how it uses the machine."""

    name: str = doc_field("enstack", "Run name, shown in logs and TensorBoard.")
    output_dir: str = doc_field("runs/enstack", "Run directory (checkpoints/, logs/, metrics/). A relative path "
                         "is resolved against the directory of the top-level config file.")
    mirror_dir: Optional[str] = doc_field(None, "A second home for checkpoints (e.g. a Google Drive folder), "
                                   "copied and verified in the background; resume takes the newest "
                                   "valid checkpoint of the two. null: none.")
    mirror_lease_seconds: float = doc_field(60.0, "The mirror is leased to one training process, renewed every quarter of "
                                     "this; a lease without a heartbeat for this long is stale and a new "
                                     "runtime takes it over (sooner: `--take-over-mirror`).")
    seed: int = doc_field(42, "Seed of weights init, shuffling and dropout; batch order is a function of it.")
    num_threads: int = doc_field(0, "CPU intra-op threads; 0: all cores.")
    device: str = doc_field("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")
    log_level: LogLevel = doc_field("info", f"{LOG_LEVELS_TEXT}.")
    dist_backend: Optional[Literal["gloo", "nccl"]] = doc_field(
        None, "torch.distributed backend when launched by torchrun with several processes; null: nccl on CUDA, "
        "gloo on CPU.")
    dist_timeout_seconds: float = doc_field(
        1800.0, "Under torchrun: a collective that does not complete in this time (a rank stuck or gone) stops "
        "every rank with an error naming the cause; a rank's own failure stops the others at once.")


@dataclass(frozen=True)
class TokenizerConfig(Section):
    """Which tokenizer turns source code into ids."""

    kind: TokenizerKind = doc_field("auto", "auto: the tokenizer files of model.name_or_path (or of path); "
                             "bpe (byte-level) or sentencepiece: trained on the training split when "
                             "path is null, else read from path.")
    vocab_size: Optional[int] = doc_field(None, "Vocabulary size of a tokenizer trained here (bpe, sentencepiece).")
    path: Optional[str] = doc_field(None, "Directory or file with tokenizer files; null: those of name_or_path.")


@dataclass(frozen=True)
class ModelConfig(Section):
    """The encoder and its classification head."""

    name_or_path: str = doc_field("microsoft/codebert-base", "A Hugging Face model id, a local model directory, "
                           "or (with from_scratch) a config.json. Relative local paths are resolved "
                           "against the top-level config file's directory.")
    num_labels: Optional[int] = doc_field(None, "Classes of the head; null: from data.label_policy (enstack5: 5, "
                                   "binary: 2, multilabel: one per label column, class: label_names or "
                                   "the data).")
    max_length: int = doc_field(512, "Tokens per function (longer ones are truncated); at most the model's "
                         "position limit (512 for CodeBERT/GraphCodeBERT, 1024 for UniXcoder).")
    dropout: Optional[float] = doc_field(None, "Dropout of encoder and head; null: the model config's own.")
    from_scratch: bool = doc_field(False, "Initialise weights randomly from the model config instead of loading them.")
    tokenizer: TokenizerConfig = section_field(TokenizerConfig, "Tokenizer: {kind, vocab_size, path}.")


@dataclass(frozen=True)
class DataConfig(Section):
    """Where the functions and labels come from, and how they are split."""

    format: DataFormat = doc_field("auto", "auto (by file extension), vdisc_hdf5, csv, jsonl, parquet or pickle.")
    train: Optional[str] = doc_field(None, "Training file; 'demo': the embedded synthetic data set, generated "
                              "deterministically under <output_dir>/data/ (use with split).")
    validation: Optional[str] = doc_field(None, "Validation file; must be null when split is given.")
    test: Optional[str] = doc_field(None, "Test file (optional); must be null when split is given.")
    text_column: str = doc_field("functionSource", "Column (HDF5 dataset) holding the function source.")
    label_columns: Tuple[str, ...] = doc_field(ENSTACK5_LABELS, "Label column(s); one for label_policy column.")
    label_policy: LabelPolicy = doc_field("enstack5", "enstack5: the five VDISC CWE classes of the paper; binary: "
                                   "vulnerable or not; multilabel: one output per label column; class: "
                                   "a single column holding the class.")
    label_names: Optional[Tuple[str, ...]] = doc_field(None, "Class names in label-index order; null: from the policy.")
    group_by_length: bool = doc_field(False, "Batch functions of similar length together (faster, same epochs).")
    split: Optional[Tuple[float, ...]] = doc_field(None, "[train, validation, test] ratios (sum 1) splitting the one "
                                            "file in data.train; null: separate files.")
    group_column: Optional[str] = doc_field(None, "With split: rows sharing this column's value stay in one split.")
    id_column: Optional[str] = doc_field(None, "Column with a row id, carried into predictions; null: row index.")
    downsample: Optional[Union[Literal["paper"], Dict[str, int]]] = doc_field(
        None, "null: all rows; 'paper': the EnStack paper's class counts; or a mapping class -> count "
        "applied to the training split.")
    max_bad_share: float = doc_field(0.01, "Largest share of unreadable or unlabelled rows that are skipped "
                              "(with a warning) before ingestion fails.")
    trust_pickle: bool = doc_field(False, "Allow reading pickle files, which can run code; must be true for pickle.")
    num_workers: int = doc_field(0, "Threads for tokenization and ingestion; 0: all cores.")


@dataclass(frozen=True)
class EarlyStoppingConfig(Section):
    """Stop when metric_for_best has not improved for a while."""

    patience: Optional[int] = doc_field(None, "Evaluations without improvement before stopping; null: never stop early.")
    threshold: float = doc_field(0.0, "Smallest change of metric_for_best that counts as an improvement.")


@dataclass(frozen=True)
class SwaConfig(Section):
    """Stochastic weight averaging (saved to checkpoints/swa/)."""

    enabled: bool = doc_field(False, "Keep a running average of the weights.")
    start_epoch: Optional[int] = doc_field(None, "First epoch (1-based) that is averaged; null: the last quarter "
                                    "of training (epoch epochs * 3 // 4 + 1).")
    every_steps: Optional[int] = doc_field(None, "Average every N optimizer steps; null: at the end of each epoch.")
    lr: Optional[float] = doc_field(None, "Constant learning rate while averaging; null: keep the schedule.")


@dataclass(frozen=True)
class TrainConfig(Section):
    """Optimisation (AdamW), evaluation, checkpointing."""

    epochs: int = doc_field(10, "Passes over the training data.")
    batch_size: int = doc_field(16, "Functions per forward pass (per device).")
    grad_accum: int = doc_field(1, "Forward passes per optimizer step; the effective batch is batch_size * grad_accum.")
    learning_rate: float = doc_field(2e-5, "Peak AdamW learning rate.")
    weight_decay: float = doc_field(0.01, "AdamW decoupled weight decay (not applied to biases and LayerNorm).")
    warmup_ratio: float = doc_field(0.0, "Share of all optimizer steps spent warming up; exclusive with warmup_steps.")
    warmup_steps: int = doc_field(0, "Optimizer steps spent warming up; exclusive with warmup_ratio.")
    lr_schedule: LrSchedule = doc_field("linear", "linear (decay to 0), cosine or constant, each after warmup.")
    max_grad_norm: float = doc_field(1.0, "Clip the global gradient norm to this; 0: no clipping.")
    precision: Precision = doc_field("auto", "auto (fp32 on CPU, fp16 on CUDA), fp32, bf16 or fp16 (with a loss "
                                  "scaler; on the CPU only fast where it has FP16 units: prefer bf16 there).")
    loss_scale: float = doc_field(65536.0, "fp16 only: the loss scaler's initial scale (torch.amp.GradScaler's "
                           "init_scale); it halves on every overflow and doubles after 2000 clean steps.")
    deterministic: bool = doc_field(False, "torch's deterministic algorithms (and cuDNN's, and the cuBLAS workspace "
                             "setting) for the fit: a resumed CUDA run then ends bitwise equal to an "
                             "uninterrupted one, at the cost of slower kernels. CPU training is deterministic "
                             "without it.")
    auto_microbatch: bool = doc_field(True, "On out of memory, run each batch as twice as many micro-batches for the "
                               "rest of the run (same global batch and update, recorded in checkpoints) "
                               "instead of stopping with advice.")
    eval_strategy: EvalStrategy = doc_field("epoch", "Evaluate at the end of each epoch or every eval_steps steps.")
    eval_steps: Optional[int] = doc_field(None, "Optimizer steps between evaluations; required for eval_strategy steps.")
    save_steps: Optional[int] = doc_field(None, "Optimizer steps between checkpoints; null: at every evaluation.")
    save_minutes: Optional[float] = doc_field(None, "Also checkpoint at the first step boundary this many minutes of wall "
                                       "time after the last save (Colab users lose time, not steps); null: off.")
    save_total_limit: Optional[int] = doc_field(2, "step-* checkpoints kept (the newest and best/ always are); null: all.")
    logging_steps: int = doc_field(50, "Optimizer steps between log records (and Python callbacks).")
    metric_for_best: Optional[Metric] = doc_field("f1_weighted", "Metric choosing checkpoints/best/ and driving "
                                           "early stopping; null: no best-model tracking.")
    greater_is_better: Optional[bool] = doc_field(None, "Direction of metric_for_best; null: false for loss, else true.")
    early_stopping: EarlyStoppingConfig = section_field(EarlyStoppingConfig, "Early stopping: {patience, threshold}.")
    swa: SwaConfig = section_field(SwaConfig, "Stochastic weight averaging: {enabled, start_epoch, every_steps, lr}.")
    save_coalesce: bool = doc_field(True, "When a checkpoint is due while the previous one is still being written "
                             "(slow Drive), skip the stale one instead of queueing it.")
    best_model_dtype: ModelDtype = doc_field("fp32", "dtype of the weights saved in checkpoints/best/.")

    def metric_greater_is_better(self) -> bool:
        """greater_is_better with its default filled in."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return self.metric_for_best != "loss"


# Dotted keys that do not change what is learned: excluded from Config.fingerprint().
# Data file paths are covered by the dataset fingerprint stored in checkpoints.
NOT_FINGERPRINTED = frozenset({
    "run.name", "run.output_dir", "run.mirror_dir", "run.mirror_lease_seconds", "run.num_threads", "run.device", "run.log_level",
    "run.dist_backend", "run.dist_timeout_seconds",
    "data.format", "data.train", "data.validation", "data.test", "data.id_column", "data.max_bad_share",
    "data.trust_pickle", "data.num_workers", "train.save_steps", "train.save_minutes", "train.save_total_limit", "train.auto_microbatch", "train.deterministic",
    "train.logging_steps", "train.save_coalesce", "train.best_model_dtype",
})


@dataclass(frozen=True)
class Config(Section):
    """A whole run configuration. Build it with ``load_config`` or ``Config.from_dict``."""

    run: RunConfig = section_field(RunConfig, "Run directory, seed, device, logging.")
    model: ModelConfig = section_field(ModelConfig, "Encoder, head, tokenizer.")
    data: DataConfig = section_field(DataConfig, "Data files, columns, labels, splits.")
    train: TrainConfig = section_field(TrainConfig, "Optimisation, evaluation, checkpoints.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], validate: bool = True, source: str = "") -> "Config":
        """A Config from a nested mapping; missing keys take defaults.

        Raises ``ConfigError`` listing every unknown key and wrongly typed value (and,
        with ``validate``, every rule ``validate`` checks).
        """
        from enstack.config import validate as v

        problems = v.Problems()
        config = v.parse(cls, d, "", problems)
        if validate:
            v.check(config, problems)
        problems.raise_if_any(source)
        return config

    def problems(self) -> List[str]:
        """Every rule this config breaks, as 'dotted.key: message' lines (empty when valid)."""
        from enstack.config import validate as v

        problems = v.Problems()
        v.check(self, problems)
        return problems.lines()

    def validate(self) -> "Config":
        """Raises one ``ConfigError`` listing every problem; returns self when valid."""
        from enstack.config import validate as v

        problems = v.Problems()
        v.check(self, problems)
        problems.raise_if_any("")
        return self

    def with_overrides(self, overrides: Union[Mapping[str, Any], Sequence[str]]) -> "Config":
        """A validated copy with dotted overrides applied (as in ``load_config``)."""
        from enstack.config.loading import deep_merge, overrides_tree

        merged = deep_merge(self.to_dict(), overrides_tree(overrides))
        return Config.from_dict(merged, source="overrides")

    def fingerprint(self) -> str:
        """sha256 of the fields that change what is learned (not paths, logging, devices)."""
        flat = {k: v for k, v in flatten(self.to_dict()).items() if k not in NOT_FINGERPRINTED}
        canonical = json.dumps(flat, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """A nested config mapping as {dotted key: value} (data.downsample stays one value)."""
    out: Dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "data.downsample":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
