"""The ``Trainer`` façade: a config in, a fine-tuned model out.

``enstack.Trainer(cfg).fit(resume=True)`` prepares the token stores, builds the
model (from a checkpoint directory, or from scratch), and runs the native C++
training loop, which releases the GIL and calls back into Python only every
``train.logging_steps`` (progress bar, logs), after evaluations and saves.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from enstack import model as es_model
from enstack._C import ConfigError
from enstack._C import train as _train
from enstack.config import Config
from enstack.data import prepare as _prepare

log = logging.getLogger("enstack")

__all__ = ["FitResult", "Trainer"]


@dataclass
class FitResult:
    """What ``fit`` returns: final and best evaluation, and where things are."""

    global_step: int
    epochs_completed: int
    early_stopped: bool
    resumed: bool
    last_eval: Optional[Dict[str, Any]]
    best_eval: Optional[Dict[str, Any]]
    best_metric: Optional[float]
    best_dir: str
    last_checkpoint: str


class Trainer:
    """Fine-tunes one encoder classifier as described by a ``Config``."""

    def __init__(self, cfg: Config):
        if not isinstance(cfg, Config):
            raise ConfigError("Trainer needs an enstack.Config; load one with enstack.load_config(path).")
        self.cfg = cfg
        self._native = None
        self._splits = None

    # -- setup -----------------------------------------------------------------------------------
    def _device(self) -> str:
        device = self.cfg.run.device
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device

    def _precision(self, device: str) -> str:
        p = self.cfg.train.precision
        if p == "auto":
            return "fp16" if device.startswith("cuda") else "fp32"
        return p

    def _build_model(self, label_names: List[str], vocab_size: int) -> es_model.EncoderClassifier:
        m = self.cfg.model
        num_labels = m.num_labels or len(label_names)
        torch.manual_seed(self.cfg.run.seed)  # the initial weights are part of the run
        if m.from_scratch:
            config = json.loads(Path(m.name_or_path).read_text())
            config["vocab_size"] = vocab_size
            config["id2label"] = {str(i): n for i, n in enumerate(label_names)}
            if m.dropout is not None:
                config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = m.dropout
            return es_model.from_config(config, num_labels=None if len(label_names) == num_labels else num_labels)
        return es_model.load(m.name_or_path, num_labels=num_labels)

    def _options(self, device: str, pad_id: int, label_names: List[str]) -> Dict[str, Any]:
        t, r = self.cfg.train, self.cfg.run
        metric = t.metric_for_best or "loss"
        greater = t.greater_is_better if t.greater_is_better is not None else metric != "loss"
        return {
            "output_dir": str(r.output_dir), "seed": r.seed, "num_threads": r.num_threads, "device": device,
            "epochs": t.epochs, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
            "learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio,
            "warmup_steps": t.warmup_steps, "lr_schedule": t.lr_schedule, "max_grad_norm": t.max_grad_norm,
            "precision": self._precision(device), "eval_strategy": t.eval_strategy, "eval_steps": t.eval_steps or 0,
            "save_steps": t.save_steps if t.save_steps is not None else (t.eval_steps or 0),
            "save_total_limit": t.save_total_limit or 1_000_000, "logging_steps": t.logging_steps,
            "metric_for_best": metric, "greater_is_better": greater,
            "patience": t.early_stopping.patience or 0, "threshold": t.early_stopping.threshold,
            "group_by_length": self.cfg.data.group_by_length, "pad_id": pad_id,
            "max_length": self.cfg.model.max_length, "label_names": label_names,
            "config_fingerprint": self.cfg.fingerprint(),
        }

    def _setup(self, progress: bool):
        if self._native is not None:
            return
        self._splits = _prepare.prepare(self.cfg, progress=progress)
        train = self._splits["train"]
        store = train.open()
        vocab = store.info["vocab_size"]
        pad_id = self._pad_id()
        model = self._build_model(train.label_names, vocab)
        device = self._device()
        eval_split = self._splits.get("validation")
        self._native = _train.Trainer(model, store, eval_split.open() if eval_split else None,
                                      self._options(device, pad_id, train.label_names))
        self.model = model

    def _pad_id(self) -> int:
        config_path = Path(self.cfg.model.name_or_path)
        config_file = config_path if config_path.suffix == ".json" else config_path / "config.json"
        if config_file.exists():
            return int(json.loads(config_file.read_text()).get("pad_token_id", 1))
        return 1

    # -- public API ------------------------------------------------------------------------------
    def fit(self, resume: bool = True, callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
            progress: bool = True) -> FitResult:
        """Trains; with ``resume`` continues from the newest valid checkpoint of the run.

        ``callback(record)`` receives every log, eval, save and end record; returning
        False stops at the next step boundary (a recovery checkpoint is written).
        Ctrl-C does the same and raises ``KeyboardInterrupt``.
        """
        self._setup(progress)
        bar = _ProgressBar(progress)

        def on_record(record: Dict[str, Any]):
            bar.update(record)
            if record.get("event") == "log":
                # With a progress bar the numbers are in its postfix; the log keeps them at debug.
                log.log(logging.DEBUG if progress else logging.INFO,"step %d/%d loss %.4f lr %.3g grad_norm %.3f %.1f samples/s", record["step"],
                         record["total_steps"], record["loss"], record["learning_rate"], record["grad_norm"],
                         record["samples_per_second"])
            return callback(record) if callback is not None else None

        try:
            out = self._native.fit(resume, on_record)
        finally:
            bar.close()
        return FitResult(**out)

    def evaluate(self, split: str = "validation") -> Dict[str, Any]:
        """Metrics of the current model on a split (``train``, ``validation`` or ``test``)."""
        self._setup(progress=False)
        return self._native.evaluate(self._store(split))

    def predict(self, split: str = "test") -> torch.Tensor:
        """Class probabilities [N, C] of a split, in the split's order."""
        self._setup(progress=False)
        return self._native.predict(self._store(split))

    def _store(self, split: str):
        if split not in self._splits:
            raise ConfigError(f"there is no '{split}' split; the data has {sorted(self._splits)}.")
        return self._splits[split].open()


class _ProgressBar:
    """tqdm over optimizer steps that will actually run (a resumed run starts at 0/remaining)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.last_step = None

    def update(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        if record.get("event") == "begin":
            from tqdm.auto import tqdm

            self.last_step = record["step"]
            desc = f"training (resumed at step {record['step']})" if record["resumed"] else "training"
            self.bar = tqdm(total=max(0, record["total_steps"] - record["step"]), desc=desc, unit="step")
            return
        if self.bar is None or record.get("event") != "log":
            return
        self.bar.update(record["step"] - self.last_step)
        self.last_step = record["step"]
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
