"""The ``Trainer`` façade: a config in, a fine-tuned model out.

``enstack.Trainer(cfg).fit(resume=True)`` prepares the token stores, builds the
model (from a checkpoint directory, or from scratch), and runs the native C++
training loop, which releases the GIL and calls back into Python only every
``train.logging_steps`` (progress bar, logs, TensorBoard), after evaluations and
saves. At the end ``fit`` draws the run's plots into ``<output_dir>/metrics``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from enstack import colab, distributed, hub
from enstack import model as es_model
from enstack._C import CheckpointError, ConfigError, DataError
from enstack._C import ckpt as _ckpt
from enstack._C import train as _train
from enstack._C import util as _util
from enstack.ckpt import tools as ckpt_tools
from enstack.config import Config, resolve_device, resolve_precision, trainer_options
from enstack.data import prepare as _prepare
from enstack.monitor.history import TrainLog
from enstack.monitor.progress import ProgressBar

log = logging.getLogger("enstack")

__all__ = ["CHECKPOINT_CHOICES", "FitResult", "Prepared", "Trainer", "checkpoint_choice"]

#: The checkpoints of a run that can be loaded by name: ``best/``, the final one (the newest valid
#: full-state checkpoint; ``last`` is accepted for it) and ``swa/``. Any other value is a directory.
CHECKPOINT_CHOICES = ("best", "final", "swa")


def checkpoint_choice(which: str) -> str:
    """``which`` in the one spelling of ``CHECKPOINT_CHOICES`` (``last`` -> ``final``)."""
    return "final" if which == "last" else which


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
    swa_eval: Optional[Dict[str, Any]] = None
    swa_dir: Optional[str] = None
    #: SWA snapshots averaged (0 without SWA).
    swa_count: int = 0
    #: Checkpoint saves that failed during this fit (reported as they happened; training went on).
    save_errors: int = 0
    #: The last of those failures' message ("" when none).
    last_save_error: str = ""
    #: Step of the model that best/ holds (-1: none); older than best_eval's step when the newest
    #: best could not be written. ``best_dir`` and ``last_checkpoint`` are what the disk holds.
    best_saved_step: int = -1
    #: Result keys of a newer core that this class does not name yet (kept, not dropped).
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_native(cls, out: Dict[str, Any]) -> "FitResult":
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in out.items() if k in names},
                   extra={k: v for k, v in out.items() if k not in names})


@dataclass(frozen=True)
class Prepared:
    """What ``Trainer.prepare()`` returns: everything the trainer's fit, evaluation and prediction run on."""

    #: Split name (``train``, ``validation``, ``test``, or those given to ``Trainer(splits=...)``) ->
    #: ``enstack.data.prepare.PreparedSplit`` (``open()`` gives its token store; ``ids``, ``label_names``).
    splits: Mapping[str, Any]
    #: The model (``enstack.model.EncoderClassifier``) the native trainer trains and predicts with.
    model: Any
    #: The native trainer (``enstack._C.train.Trainer``): ``fit``, ``evaluate``, ``predict(store, batch_size,
    #: output)``.
    native: Any
    #: The device it runs on (run.device with ``auto`` resolved): ``cpu``, ``cuda`` or ``cuda:N``.
    device: str
    #: train.precision with ``auto`` resolved for the device: ``fp32``, ``bf16`` or ``fp16``.
    precision: str

    @property
    def label_names(self) -> List[str]:
        """The class names, in label-index order (the probability columns)."""
        return list(self.splits["train"].label_names)


class Trainer:
    """Fine-tunes one encoder classifier as described by a ``Config``."""

    def __init__(self, cfg: Config, checkpoint: Optional[str] = None, allow_changes: bool = False,
                 splits: Optional[Mapping[str, Any]] = None):
        """``checkpoint`` starts from saved weights instead of ``model.name_or_path`` (for
        ``evaluate``/``predict``): ``best``, ``final`` (or ``last``), ``swa`` or a checkpoint directory. A run's
        checkpoints are scored on the data the run was prepared with: a config whose data differs
        is refused with a ``DataError`` unless ``allow_changes`` (the new data is then tokenized
        with the run's tokenizer, and the run's token stores are rebuilt for it).

        ``splits`` (name -> ``enstack.data.prepare.PreparedSplit``) trains on these token stores
        instead of preparing the config's data: ``train`` is trained on, ``validation`` (when
        given) evaluated, and every split can be predicted (e.g. a stacking fold's stores)."""
        if not isinstance(cfg, Config):
            raise ConfigError("Trainer needs an enstack.Config; load one with enstack.load_config(path).")
        if splits is not None and "train" not in splits:
            raise ConfigError(f"Trainer(splits=...) needs a 'train' split, got {sorted(splits)}.")
        colab.check_drive_paths(cfg)  # before anything is written to an unmounted Drive path
        self.cfg = cfg
        self.checkpoint = checkpoint
        self._score_changed_data = allow_changes
        self._given_splits = dict(splits) if splits is not None else None
        self._native = None
        self._splits = None
        self._group: Optional[distributed.Group] = None  # under torchrun with several processes
        self._source: Optional[Path] = None
        self._verified: Dict[str, str] = {}

    # -- setup -----------------------------------------------------------------------------------

    def _build_model(self, label_names: List[str], vocab_size: int) -> es_model.EncoderClassifier:
        m = self.cfg.model
        num_labels = m.num_labels or len(label_names)
        torch.manual_seed(self.cfg.run.seed)  # the initial weights are part of the run
        if self.checkpoint is not None:
            return es_model.load(self.checkpoint_dir(self.checkpoint), num_labels=num_labels)
        source = self._model_source()
        if m.from_scratch:
            config = json.loads((source if source.suffix == ".json" else source / "config.json").read_text())
            config["vocab_size"] = vocab_size
            config["id2label"] = {str(i): n for i, n in enumerate(label_names)}
            if m.dropout is not None:
                config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = m.dropout
            return es_model.from_config(config, num_labels=None if len(label_names) == num_labels else num_labels)
        return es_model.load(source, num_labels=num_labels)

    def _model_source(self) -> Path:
        """model.name_or_path as a local path (a Hugging Face id is fetched once per Trainer)."""
        if self._source is None:
            self._source = hub.resolve(self.cfg.model.name_or_path, from_scratch=self.cfg.model.from_scratch)
        return self._source

    def _setup(self, progress: bool, allow_changes: Optional[bool] = None):
        # A fit refused for a changed config has loaded the checkpoint's weights already;
        # fit(allow_changes=True) after it starts from a fresh setup. None: any setup will do.
        if self._native is not None and allow_changes in (None, self._allow_changes):
            return
        allow_changes = bool(allow_changes)
        if self.checkpoint is not None and not self._score_changed_data:
            self._refuse_changed_data()
        device = resolve_device(self.cfg)
        group = self._group = distributed.setup(self.cfg, device)
        if group is not None:
            device = distributed.device_for(device, group.local_rank)
        if self._given_splits is not None:
            self._splits = dict(self._given_splits)
        elif group is None:
            self._splits = _prepare.prepare(self.cfg, progress=progress)
        else:  # rank 0 tokenizes and stores the data; the others then find it prepared
            if group.is_writer:
                self._splits = _prepare.prepare(self.cfg, progress=progress)
            group.barrier()
            if not group.is_writer:
                self._splits = _prepare.prepare(self.cfg, progress=False)
        train = self._splits["train"]
        store = train.open()
        vocab = store.info["vocab_size"]
        pad_id = self._pad_id()
        model = self._build_model(train.label_names, vocab)
        eval_split = self._splits.get("validation")
        self._native = _train.Trainer(model, store, eval_split.open() if eval_split else None,
                                      trainer_options(self.cfg, device, pad_id, train.label_names, allow_changes))
        if group is not None:
            self._native.set_distributed(group.process_group, group.store, group.timeout_seconds)
        self._allow_changes = allow_changes
        self._prepared = Prepared(splits=MappingProxyType(self._splits), model=model, native=self._native,
                                  device=device, precision=resolve_precision(self.cfg, device))
        self.model = model

    def _refuse_changed_data(self) -> None:
        """Scoring a checkpoint on other data would rebuild the run's token stores (and could
        reorder its classes) under it."""
        changed = _prepare.changed_splits(self.cfg)
        if changed:
            run = Path(self.cfg.run.output_dir)
            raise DataError(
                f"the config's data differs from the data the run in {run} was prepared with: "
                + "; ".join(f"{name}: {what}" for name, what in changed.items())
                + f". Give the run's own config (a copy is {run / 'config.yaml'}), or use the new data knowingly: "
                "Trainer(cfg, checkpoint=..., allow_changes=True) / `--allow-changes` (it is tokenized with the "
                "run's tokenizer, and the run's token stores are rebuilt for it).")

    def _pad_id(self) -> int:
        config_path = Path(self.checkpoint_dir(self.checkpoint)) if self.checkpoint else self._model_source()
        config_file = config_path if config_path.suffix == ".json" else config_path / "config.json"
        if config_file.exists():
            return int(json.loads(config_file.read_text()).get("pad_token_id", 1))
        return 1

    # -- public API ------------------------------------------------------------------------------
    def prepare(self, progress: bool = False) -> Prepared:
        """Prepares what this trainer runs on and returns it (a ``Prepared``): the splits' token
        stores (the config's data, tokenized and stored once, or the splits given to the
        constructor), the model (from ``model.name_or_path``, or ``checkpoint``'s weights), the
        native trainer with the config's options, and the resolved device and precision.

        Done once: later calls, ``fit``, ``evaluate`` and ``predict`` reuse it (a ``fit`` with
        ``allow_changes`` after a refused one prepares again). ``progress`` shows tokenization
        progress. Scoring a checkpoint on changed data is refused here as in the constructor's
        ``allow_changes``.
        """
        self._setup(progress)
        return self._prepared

    def fit(self, resume: bool = True, callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
            progress: bool = True, tensorboard: bool = True, plots: bool = True,
            allow_changes: bool = False, take_over_mirror: bool = False) -> FitResult:
        """Trains; with ``resume`` continues from the newest valid checkpoint of the run.

        ``callback(record)`` receives every begin, log, eval, save and end record;
        returning False stops at the next step boundary (a recovery checkpoint is
        written). Ctrl-C does the same and raises ``KeyboardInterrupt``.
        ``tensorboard`` writes event files to ``<output_dir>/logs``; ``plots`` draws
        training curves, confusion matrices and ROC curves (of the final model on the
        validation split) into ``<output_dir>/metrics`` at the end. A resume whose
        data or configuration changed is refused unless ``allow_changes``.

        The run directory is locked for the whole call (a second process training or
        preparing there is refused, naming this one); with ``run.mirror_dir`` the mirror
        is leased to this process, and ``take_over_mirror`` takes over a lease that
        another runtime still renews (only when you know it is dead). SIGTERM stops
        like Ctrl-C and raises ``enstack.Terminated`` (a ``KeyboardInterrupt``).
        """
        if distributed.launched():  # rank 0 holds the run's lock (the native trainer takes it)
            with _deterministic(self.cfg.train.deterministic):
                return self._fit(resume, callback, progress, tensorboard, plots, allow_changes, take_over_mirror)
        with _util.RunLock(str(self.cfg.run.output_dir), "training"), _deterministic(self.cfg.train.deterministic):
            return self._fit(resume, callback, progress, tensorboard, plots, allow_changes, take_over_mirror)

    @property
    def is_writer(self) -> bool:
        """False on the data-parallel ranks other than 0, which write no files (see enstack.distributed)."""
        return self._group is None or self._group.is_writer

    def _fit(self, resume, callback, progress, tensorboard, plots, allow_changes, take_over_mirror) -> FitResult:
        self._setup(progress, allow_changes)
        writer = self.is_writer
        if not resume:
            if writer:
                self._set_aside_previous_checkpoints()
            if self._group is not None:
                self._group.barrier()  # no rank may resume from what rank 0 moves aside
        bar = ProgressBar(progress and writer)
        monitors = self._monitors(tensorboard) if writer else []

        def on_record(record: Dict[str, Any]):
            if record.get("event") == "begin":
                self._save_run_config()  # the checkpoint's config is accepted: it is this run's from now on
            bar.update(record)
            for monitor in list(monitors):
                try:
                    monitor(record)
                except Exception as e:  # noqa: BLE001 - monitoring must never stop a long run
                    log.warning("%s stopped after an error (training goes on): %s", type(monitor).__name__, e)
                    monitors.remove(monitor)
            if record.get("event") == "log":
                # With a progress bar the numbers are in its postfix; the log keeps them at debug.
                log.log(logging.DEBUG if progress else logging.INFO,
                        "step %d/%d loss %.4f lr %.3g grad_norm %.3f %.1f samples/s", record["step"],
                        record["total_steps"], record["loss"], record["learning_rate"], record["grad_norm"],
                        record["samples_per_second"])
            return callback(record) if callback is not None else None

        try:
            out = self._native.fit(resume, on_record, take_over_mirror)
        except CheckpointError as e:
            changed = self._changed_settings() if "configuration changed" in str(e) else ""
            if not changed:
                raise
            raise CheckpointError(f"{e} Changed since then: {changed}.") from None
        finally:
            bar.close()
            for monitor in monitors:
                monitor.close()
        result = FitResult.from_native(out)
        if plots:
            self.write_plots(result.global_step)  # every rank predicts its share; rank 0 draws
        return result

    def _set_aside_previous_checkpoints(self) -> None:
        """Starting over in a run directory that has checkpoints: they are moved aside
        (never deleted), so a later resume cannot pick a higher-step checkpoint of the
        previous run and mix the two."""
        roots = ckpt_tools.run_roots(self.cfg)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for root in roots:
            if not root.is_dir() or not any(root.iterdir()):
                continue
            aside = root.with_name(f"checkpoints.previous-{stamp}")
            root.rename(aside)
            log.warning("starting over: the previous run's checkpoints were moved to %s", aside)

    def evaluate(self, split: str = "validation") -> Dict[str, Any]:
        """Metrics of the current model on a split (``train``, ``validation`` or ``test``)."""
        self._setup(progress=False)
        return self._native.evaluate(self._store(split))

    def predict(self, split: str = "test") -> torch.Tensor:
        """Class probabilities [N, C] of a split, in the split's order."""
        self._setup(progress=False)
        return self._native.predict(self._store(split))

    def write_predictions(self, splits: Sequence[str] = ("validation", "test"), checkpoint: str = "best",
                          logits: bool = False, out_dir: Optional[str] = None) -> Dict[str, Any]:
        """Predicts each split with ``checkpoint``'s weights (best, final or swa) and writes
        ``<split>.probabilities.npy`` (+ ``.logits.npy``) and a ``<split>.json`` index of ids, labels,
        store fingerprint and checkpoint identity to ``out_dir`` (default
        ``<output_dir>/predictions/<checkpoint>``); files still fresh are reused. Returns
        ``{split: enstack.predictions.PredictionSet}``. Loads those weights into this trainer's model.
        """
        from enstack.predictions import predict_split

        return {s: predict_split(self, s, checkpoint, logits=logits, out_dir=out_dir) for s in splits}

    def predict_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Class probabilities [N, C] of new functions (source code), tokenized as the run's data."""
        import tempfile

        import numpy as np

        from enstack._C.data import TokenStore, build_token_store

        texts = list(texts)
        if not texts:
            raise DataError("predict_texts got no functions; give at least one.")
        self._setup(progress=False)
        tokenizer = _prepare.run_tokenizer(self.cfg)
        with tempfile.TemporaryDirectory(prefix="enstack-predict-") as tmp:
            path = Path(tmp) / "input.tokens"
            # The store format needs labels; these are placeholders that predict never reads.
            build_token_store(str(path), tokenizer, texts, np.zeros(len(texts), dtype=np.int64),
                              int(self.cfg.model.max_length), num_threads=int(self.cfg.run.num_threads or 0))
            return self._native.predict(TokenStore(str(path)))

    def label_names(self) -> List[str]:
        """The class names, in the order of the probability columns."""
        self._setup(progress=False)
        return list(self._splits["train"].label_names)

    def checkpoint_dir(self, which: str = "best") -> str:
        """A verified checkpoint directory of this run: ``best``, ``final`` (the newest valid full
        checkpoint; ``last`` means the same), ``swa`` or a path."""
        which = checkpoint_choice(which)
        if self.checkpoint is None or which != checkpoint_choice(self.checkpoint):
            return self._find_checkpoint(which)
        # The one this Trainer loads from is verified once: verifying reads every byte (checksums),
        # slow for a large model on Drive.
        if which not in self._verified:
            self._verified[which] = self._find_checkpoint(which)
        return self._verified[which]

    def _find_checkpoint(self, which: str) -> str:
        root = Path(self.cfg.run.output_dir) / _ckpt.CHECKPOINTS_DIR
        if which == "final":
            return str(ckpt_tools.final_checkpoint(self.cfg))
        path = root / {"best": _ckpt.BEST_DIR, "swa": _ckpt.SWA_DIR}[which] if which in ("best", "swa") else Path(which)
        if not path.is_dir():
            hint = {"best": "it appears after the first evaluation (train.metric_for_best must be set)",
                    "swa": "it is written when train.swa.enabled is true"}.get(which, "check the path")
            raise CheckpointError(f"there is no checkpoint directory {path}: {hint}.")
        _ckpt.verify_checkpoint(str(path))  # raises CheckpointError naming what is wrong
        return str(path)

    # -- the run's configuration ---------------------------------------------------------------------
    def _save_run_config(self) -> None:
        path = Path(self.cfg.run.output_dir) / "config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.cfg.to_yaml())
        tmp.replace(path)

    def _changed_settings(self) -> str:
        """'key: old -> new' for the fingerprinted settings that differ from the run's saved config.yaml."""
        import yaml

        from enstack.config.schema import NOT_FINGERPRINTED, flatten

        path = Path(self.cfg.run.output_dir) / "config.yaml"
        try:
            saved = flatten(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError):
            return ""
        now = flatten(self.cfg.to_dict())
        keys = sorted(k for k in set(saved) | set(now) if k not in NOT_FINGERPRINTED and saved.get(k) != now.get(k))
        return ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys)

    # -- monitoring ------------------------------------------------------------------------------
    def _monitors(self, tensorboard: bool) -> list:
        out_dir = Path(self.cfg.run.output_dir)
        monitors: list = [TrainLog(out_dir / "metrics")]
        if tensorboard:
            try:
                from enstack.monitor.tensorboard import TensorBoardLogger

                import torch.utils.tensorboard  # noqa: F401 - fails without the tensorboard package
            except ImportError as e:
                log.warning("TensorBoard logging is off: %s (`pip install tensorboard`)", e)
            else:
                monitors.append(TensorBoardLogger(out_dir / "logs", label_names=self._splits["train"].label_names))
        return monitors

    def write_plots(self, step: int) -> None:
        """Draws the run's training curves, and the confusion matrices and ROC curves of the current
        model on the validation split, into ``<output_dir>/metrics`` (what ``fit(plots=True)`` does at
        its end; ``step`` labels them). A failure is logged, never raised."""
        from enstack.monitor import plots

        out_dir = Path(self.cfg.run.output_dir)
        try:
            probs = labels = None
            names = self._splits["train"].label_names
            if "validation" in self._splits:
                labels = self._splits["validation"].open().all_labels()
                if labels.dim() == 1 or labels.shape[1] == 1:  # ROC and confusion need one class per function
                    probs = self.predict("validation").float().numpy()
                    labels = labels.reshape(-1).numpy()
                else:
                    labels = None
            if not self.is_writer:
                return
            written = plots.write_run_plots(out_dir, probs, labels, names, split="validation", step=step)
            log.info("plots written to %s: %s", out_dir / "metrics", ", ".join(p.name for p in written))
        except Exception as e:  # noqa: BLE001 - the run is saved; a failed plot must not lose the result
            log.warning("plots not written: %s: %s", type(e).__name__, e)

    def _store(self, split: str):
        if split not in self._splits:
            raise ConfigError(f"there is no '{split}' split; the data has {sorted(self._splits)}.")
        return self._splits[split].open()



@contextlib.contextmanager
def _deterministic(enabled: bool):
    """train.deterministic for the duration of a fit: torch's deterministic algorithms, cuDNN's
    deterministic kernels without autotuning, and the cuBLAS workspace setting that deterministic
    cuBLAS needs (it takes effect only if set before the process's first cuBLAS call: start the
    process with CUBLAS_WORKSPACE_CONFIG=:4096:8 when CUDA was used before the fit)."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
