"""Per-split prediction files of a base model, and the checkpoints they come from.

``predict_split`` loads a run's chosen weights (``best``, ``final`` or ``swa``),
runs the native batched inference over one split's token store and writes

    <dir>/<split>.probabilities.npy   float32 [N, C], rows in the split's order
    <dir>/<split>.logits.npy          (when asked for)
    <dir>/<split>.json                the index: ids, labels, label names, the split's
                                      store fingerprint and data key, the checkpoint's
                                      identity, and each array's sha256

(by default ``<output_dir>/predictions/<checkpoint>/``). The index is written last,
so a killed write leaves no index that points at half an array. A later call reuses
the files when the store fingerprint, the checkpoint identity and the checksums all
still match, so predictions of a retrained model or a rebuilt dataset are never
mistaken for current ones. Arrays are plain ``.npy`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from enstack._C import CheckpointError, ConfigError, DataError, ModelError
from enstack._C import ckpt as _ckpt
from enstack.ckpt import tools as ckpt_tools
from enstack.files import atomic_write
from enstack.trainer import CHECKPOINT_CHOICES, checkpoint_choice

log = logging.getLogger("enstack")

# The checkpoint identity whose weights each trainer's model holds (loaded by predict_split).
_loaded: "weakref.WeakKeyDictionary[Any, Dict[str, Any]]" = weakref.WeakKeyDictionary()

__all__ = ["CHECKPOINTS", "OUTPUTS", "PredictionSet", "checkpoint_dir", "checkpoint_identity", "load",
           "predict_split", "save"]

FORMAT = "enstack-predictions"
VERSION = 1
OUTPUTS = ("probabilities", "logits")
CHECKPOINTS = CHECKPOINT_CHOICES


@dataclass
class PredictionSet:
    """One base model's outputs on one split, with what identifies the rows and the weights."""

    split: str
    ids: List[str]
    labels: np.ndarray                      # int64 [N]
    label_names: List[str]
    outputs: Dict[str, np.ndarray]          # "probabilities" (always) and "logits": float32 [N, C]
    data_key: str                           # the split's texts and labels (independent of the tokenizer)
    store_fingerprint: str = ""
    checkpoint: Dict[str, Any] = field(default_factory=dict)
    model: str = ""                         # the base model's name, for messages

    @property
    def probabilities(self) -> np.ndarray:
        return self.outputs["probabilities"]

    def validate(self, where: str = "") -> "PredictionSet":
        """Raises DataError unless shapes, labels and probabilities are consistent."""
        where = where or f"{self.model or 'predictions'} ({self.split})"
        n, c = len(self.ids), len(self.label_names)
        if c < 2:
            raise DataError(f"{where}: {c} label names; stacking needs a classifier with >= 2 classes.")
        if len(set(self.ids)) != n:
            raise DataError(f"{where}: example ids are not unique; give the data an id column (data.id_column).")
        if self.labels.shape != (n,):
            raise DataError(f"{where}: {self.labels.shape[0] if self.labels.ndim else 0} labels for {n} ids; "
                            "stacking needs one class label per example (not multilabel).")
        if n and (self.labels.min() < 0 or self.labels.max() >= c):
            raise DataError(f"{where}: labels outside 0..{c - 1} for {c} label names.")
        if "probabilities" not in self.outputs:
            raise DataError(f"{where}: no probabilities.")
        for kind, array in self.outputs.items():
            if array.shape != (n, c):
                raise DataError(f"{where}: {kind} have shape {array.shape}, expected ({n}, {c}).")
            if not np.all(np.isfinite(array)):
                raise DataError(f"{where}: {kind} contain NaN or infinity.")
        return self


# ---------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(ps: PredictionSet, directory: os.PathLike) -> Path:
    """Writes ``ps`` as ``<split>.<output>.npy`` files plus the ``<split>.json`` index (last)."""
    ps.validate()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, array in ps.outputs.items():
        path = directory / f"{ps.split}.{kind}.npy"
        atomic_write(path, lambda f, a=array: np.save(f, np.ascontiguousarray(a, dtype=np.float32),
                                                      allow_pickle=False))
        files[kind] = {"file": path.name, "sha256": _sha256(path)}
    index = {"format": FORMAT, "version": VERSION, "model": ps.model, "split": ps.split, "count": len(ps.ids),
             "label_names": list(ps.label_names), "data_key": ps.data_key, "store_fingerprint": ps.store_fingerprint,
             "checkpoint": ps.checkpoint, "outputs": files, "ids": list(ps.ids),
             "labels": [int(v) for v in ps.labels]}
    path = directory / f"{ps.split}.json"
    atomic_write(path, lambda f: f.write(json.dumps(index, indent=1).encode()))
    return path


def load(directory: os.PathLike, split: str, outputs: Sequence[str] = ("probabilities",), model: str = "") -> PredictionSet:
    """Reads ``<split>.json`` and its arrays from ``directory``; DataError when missing, stale or corrupt."""
    directory = Path(directory)
    where = f"{model + ': ' if model else ''}{directory / (split + '.json')}"
    index_path = directory / f"{split}.json"
    if not index_path.is_file():
        available = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
        raise DataError(f"no {split} predictions at {where} (this directory has {available or 'none'}); write them "
                        "with Trainer.write_predictions or `enstack stack`, which predicts every split it needs.")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{where} is not a readable prediction index ({e}); delete it to predict again.") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DataError(f"{where} is not an enstack prediction index (format {FORMAT} v{VERSION}).")
    arrays = {}
    for kind in dict.fromkeys(("probabilities", *outputs)):
        entry = index["outputs"].get(kind)
        if entry is None:
            raise DataError(f"{where} has no {kind}; predict again with {kind} (stack.features).")
        path = directory / entry["file"]
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise DataError(f"{path} is missing or does not match its checksum in {index_path.name}; delete "
                            f"{index_path.name} to predict again.")
        arrays[kind] = np.load(path, allow_pickle=False)
    ps = PredictionSet(split=index["split"], ids=list(index["ids"]), labels=np.asarray(index["labels"], dtype=np.int64),
                       label_names=list(index["label_names"]), outputs=arrays, data_key=index["data_key"],
                       store_fingerprint=index.get("store_fingerprint", ""), checkpoint=index.get("checkpoint", {}),
                       model=model or index.get("model", ""))
    return ps.validate(where)


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(cfg, kind: str) -> Path:
    """The directory holding a run's ``best``, ``final`` (newest full step) or ``swa`` weights."""
    kind = checkpoint_choice(kind)
    if kind not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, not {kind!r}.")
    root = Path(cfg.run.output_dir) / _ckpt.CHECKPOINTS_DIR
    if kind == "final":  # the trainer's own choice: what a resume would continue from
        return ckpt_tools.final_checkpoint(cfg)
    path = root / {"best": _ckpt.BEST_DIR, "swa": _ckpt.SWA_DIR}[kind]
    if not (path / _ckpt.MANIFEST_FILE).is_file():
        hint = {"best": "it is written at evaluations when train.metric_for_best is set",
                "swa": "it is written when train.swa.enabled is true"}[kind]
        raise CheckpointError(f"no '{kind}' checkpoint at {path} ({hint}); train the model first, or choose "
                              "another checkpoint (stack.checkpoint: best, final or swa).")
    return path


def checkpoint_identity(path: os.PathLike, kind: str) -> Dict[str, Any]:
    """What makes two checkpoints the same weights: the manifest's step and the weights' checksum.

    The path is kept for people, not compared: a Drive folder has another path in the next session.
    """
    manifest = _ckpt.verify_checkpoint(str(path))  # raises CheckpointError when a file is missing or corrupt
    weights = next((f for f in manifest["files"] if f["name"] == "model.safetensors"), None)
    if weights is None:
        raise CheckpointError(f"checkpoint {path} has no model.safetensors in its manifest.")
    return {"kind": kind, "step": manifest["step"], "model_fnv1a64": weights["fnv1a64"], "model_size": weights["size"],
            "dir": str(path)}


def _same_checkpoint(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    keys = ("kind", "step", "model_fnv1a64", "model_size")
    return all(a.get(k) == b.get(k) for k in keys)


def data_key_of(store_path: os.PathLike) -> str:
    """The hash of a split's texts and labels that `data prepare` keeps beside the store.

    It differs between datasets but not between tokenizers, so base models with
    different tokenizers can be checked to have predicted the same functions.
    """
    sidecar = Path(store_path).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        return str(meta.get("data_key") or meta["source_key"].split("-")[0])
    except (OSError, ValueError, KeyError, AttributeError):
        raise DataError(f"{sidecar} is missing or unreadable; run `enstack data prepare` for this config.") from None


# ---------------------------------------------------------------- predicting


def _native_predict(trainer, store, batch_size: int, output: str) -> np.ndarray:
    if output == "probabilities":
        result = trainer.prepare().native.predict(store, batch_size)
    else:
        try:
            result = trainer.prepare().native.predict(store, batch_size, output=output)
        except TypeError:
            raise ModelError("this build of enstack's core predicts probabilities only; logits need the rebuilt "
                             "core (`make build`), or use stack.features: probabilities.") from None
    return result.detach().to("cpu").float().numpy()


def predict_split(trainer, split: str, checkpoint: str = "best", logits: bool = False, batch_size: int = 0,
                  out_dir: Optional[os.PathLike] = None, model: str = "") -> PredictionSet:
    """``trainer``'s predictions on ``split`` with the weights of ``checkpoint``, written to files (or reused)."""
    checkpoint = checkpoint_choice(checkpoint)
    # The checkpoint first: a missing one is a quick, clear error before any data is prepared.
    ckpt_dir = checkpoint_dir(trainer.cfg, checkpoint)
    identity = checkpoint_identity(ckpt_dir, checkpoint)
    splits = trainer.prepare().splits
    if split not in splits:
        raise DataError(f"{model or trainer.cfg.run.name}: there is no '{split}' split (the data has "
                        f"{sorted(splits)}); stacking needs validation and test splits: set data.test or "
                        "a test share in data.split.")
    prepared = splits[split]
    out_dir = Path(out_dir) if out_dir is not None else Path(trainer.cfg.run.output_dir) / "predictions" / checkpoint
    wanted = ("probabilities", "logits") if logits else ("probabilities",)
    try:
        old = load(out_dir, split, wanted, model)
        if old.store_fingerprint == prepared.fingerprint and _same_checkpoint(old.checkpoint, identity):
            log.debug("reusing %s predictions in %s", split, out_dir)
            return old
        log.info("%s predictions in %s are stale (other weights or data); predicting again", split, out_dir)
    except DataError:
        pass
    if _loaded.get(trainer) != identity:
        from enstack import model as es_model

        trainer.model.load_state_dict(es_model.load(str(ckpt_dir)).state_dict())
        _loaded[trainer] = identity
    store = prepared.open()
    batch = batch_size or trainer.cfg.train.batch_size
    outputs = {kind: _native_predict(trainer, store, batch, kind) for kind in wanted}
    labels = store.all_labels().numpy()
    if labels.ndim != 1:
        raise DataError(f"{model or trainer.cfg.run.name}: the {split} split is multilabel; stacking needs one "
                        "class per function (data.label_policy enstack5, binary or class).")
    ps = PredictionSet(split=split, ids=list(prepared.ids), labels=labels.astype(np.int64),
                       label_names=list(prepared.label_names), outputs=outputs,
                       data_key=data_key_of(prepared.store_path), store_fingerprint=prepared.fingerprint,
                       checkpoint=identity, model=model)
    save(ps, out_dir)
    log.info("wrote %s predictions of %s (%s, step %s) to %s", split, model or trainer.cfg.run.name, checkpoint,
             identity["step"], out_dir)
    return ps
