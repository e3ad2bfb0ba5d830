"""Import of Hugging Face-style checkpoints into an enstack run (``enstack ckpt import``).

Two sources are understood. The ``transformers`` Trainer's ``checkpoint-N/``:
``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``), ``optimizer.pt``,
``scheduler.pt``, ``trainer_state.json`` (``global_step``, ``epoch`` as a float). And
the earlier Python pipeline's directories: the same weights plus ``training_state.pth``
(``optimizer_state_dict``, 1-based ``epoch``, ``step`` = batches done in it, 0 when the
epoch completed, ``total_batches``). Pickled files are read only with
``torch.load(weights_only=True)``.

The result is an ordinary full checkpoint ``<output_dir>/checkpoints/step-N/`` of the
run described by the config, so ``enstack.Trainer(cfg).fit(resume=True)`` continues
from the imported weights, AdamW moments and optimizer step. Its trainer state carries
the run's own data and config fingerprints: importing is the explicit decision to
continue the old run on this data, so the trainer accepts it without ``allow_changes``.
The old run's data order cannot be reproduced; the position (epoch, share of it done)
is carried over and the resumed run draws that epoch's order fresh from ``run.seed``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from enstack._C import CheckpointError, ConfigError
from enstack._C import ckpt as _ckpt

log = logging.getLogger("enstack")

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["hf_decay_parameter_names", "import_checkpoint"]

# transformers' Trainer.get_decay_parameter_names: no weight decay for biases and norms.
_NO_DECAY = [re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")]


def hf_decay_parameter_names(names: List[str]) -> List[str]:
    """The parameters transformers' Trainer puts in its weight-decay group (first of its two groups).

    Its rule also exempts every parameter of an ``nn.LayerNorm``; in RoBERTa/BERT those
    modules are all named ``LayerNorm``, which the name patterns already cover.
    """
    return [n for n in names if not any(p.search(n.lower()) for p in _NO_DECAY)]


def _load_pickled(path: Path) -> Any:
    from enstack.model import load_pickled

    return load_pickled(path, CheckpointError, "It is damaged or holds more than tensors and plain values; "
                        "enstack does not unpickle arbitrary objects.")


def _read_source(src: Path) -> Dict[str, Any]:
    """The source's format, optimizer/scheduler/scaler states and position fields."""
    if not src.is_dir() or not (src / "config.json").is_file():
        raise CheckpointError(f"{src} is not a Hugging Face checkpoint directory (no config.json).")
    if (src / "trainer_state.json").is_file():
        try:
            state = json.loads((src / "trainer_state.json").read_text())
            step = int(state["global_step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{src}/trainer_state.json is unreadable or lacks global_step ({e}).") from e
        if not (src / "optimizer.pt").is_file():
            raise CheckpointError(f"{src} has no optimizer.pt, so the AdamW moments cannot be continued. Start "
                                  f"a new run from its weights instead (model.name_or_path: {src}).")
        return {"format": "transformers Trainer", "global_step": step, "epoch": state.get("epoch"),
                "optimizer": _load_pickled(src / "optimizer.pt"),
                "scheduler": _load_pickled(src / "scheduler.pt") if (src / "scheduler.pt").is_file() else None,
                "scaler": _load_pickled(src / "scaler.pt") if (src / "scaler.pt").is_file() else None}
    if (src / "training_state.pth").is_file():
        state = _load_pickled(src / "training_state.pth")
        if not isinstance(state, dict) or "optimizer_state_dict" not in state or "epoch" not in state:
            raise CheckpointError(f"{src}/training_state.pth lacks optimizer_state_dict or epoch.")
        return {"format": "enstack Python pipeline", "global_step": None, "pipeline_epoch": int(state["epoch"]),
                "pipeline_step": int(state.get("step", 0)), "total_batches": int(state.get("total_batches") or 0),
                "optimizer": state["optimizer_state_dict"], "scheduler": state.get("scheduler_state_dict"),
                "scaler": state.get("scaler_state_dict")}
    raise CheckpointError(f"{src} has neither trainer_state.json (transformers Trainer) nor training_state.pth "
                          "(the earlier pipeline); there is no training position to continue from.")


def _module_orders(src_config: Dict[str, Any], names: List[str]) -> List[Tuple[str, List[str]]]:
    """Candidate orders of named_parameters() in the model that wrote the optimizer state.

    transformers < 5 registers modules in enstack's order; transformers 5 moved RoBERTa's
    position_embeddings after its LayerNorm. The installed transformers, when present,
    supplies its own order; the shapes of the moments then decide.
    """
    orders = [("enstack / transformers 4 module order", names)]
    try:
        import transformers

        with torch.device("meta"):
            hf = transformers.AutoModelForSequenceClassification.from_config(
                transformers.AutoConfig.for_model(**src_config))
        hf_names = [n for n, _ in hf.named_parameters()]
        if hf_names != names and sorted(hf_names) == sorted(names):
            orders.append((f"transformers {transformers.__version__} module order", hf_names))
    except Exception as e:  # noqa: BLE001 - optional: without transformers only the first order is tried
        log.debug("no module order from transformers: %s", e)
    return orders


def _index_to_name(groups: List[Dict[str, Any]], order: List[str]) -> Optional[Dict[int, str]]:
    indices = [i for g in groups for i in g["params"]]
    if all("param_names" in g for g in groups):  # optimizers built from named parameters say so
        return dict(zip(indices, [n for g in groups for n in g["param_names"]]))
    decay = hf_decay_parameter_names(order)
    no_decay = [n for n in order if n not in set(decay)]
    sizes = [len(g["params"]) for g in groups]
    if len(groups) == 2 and sizes == [len(decay), len(no_decay)] and float(groups[1].get("weight_decay", 0)) == 0:
        return dict(zip(indices, decay + no_decay))  # transformers' Trainer: decay group, then the rest
    if len(groups) == 1 and sizes == [len(order)]:
        return dict(zip(indices, order))  # AdamW(model.parameters()), as the earlier pipeline built it
    return None


def _map_moments(optimizer: Dict[str, Any], shapes: Dict[str, torch.Size], names: List[str],
                 src_config: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], str]:
    """optimizer.safetensors entries (``<name>.exp_avg``, ``.exp_avg_sq``, ``.step``) from a torch state."""
    try:
        groups, state = optimizer["param_groups"], optimizer["state"]
    except (KeyError, TypeError):
        raise CheckpointError("the optimizer state has no param_groups/state; it is not a torch optimizer's.") from None
    if any("max_exp_avg_sq" in s for s in state.values()):
        raise CheckpointError("the optimizer used AMSGrad, which enstack's AdamW does not; start a new run.")
    if any("exp_avg" not in s or "exp_avg_sq" not in s for s in state.values()):
        raise CheckpointError("the optimizer state is not Adam's (no exp_avg/exp_avg_sq); only AdamW imports.")
    fits: Dict[tuple, Tuple[str, Dict[int, str]]] = {}
    for label, order in _module_orders(src_config, names):
        mapping = _index_to_name(groups, order)
        if mapping is not None and all(i in mapping and s["exp_avg"].shape == shapes[mapping[i]]
                                       for i, s in state.items()):
            fits.setdefault(tuple(sorted(mapping.items())), (label, mapping))
    if len(fits) != 1:
        sizes = [len(g["params"]) for g in groups]
        why = "no parameter order fits" if not fits else "several parameter orders fit equally"
        raise CheckpointError(
            f"cannot tell which parameter each optimizer entry belongs to ({why}: groups of {sizes} for "
            f"{len(names)} parameters). Only optimizers of the transformers Trainer (decay group, then no-decay) "
            "or AdamW(model.parameters()) over the same model import; install the transformers version that "
            "wrote the checkpoint if it is not 4.x.")
    label, mapping = next(iter(fits.values()))
    out: Dict[str, torch.Tensor] = {}
    fresh = []
    by_name = {mapping[i]: s for i, s in state.items()}
    for name in names:
        s = by_name.get(name)
        if s is None:
            fresh.append(name)
        step = float(s["step"]) if s is not None else 0.0
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{name}.{key}"] = s[key].float().contiguous() if s is not None else torch.zeros(shapes[name])
        out[name + ".step"] = torch.tensor(step, dtype=torch.float32)
    if fresh:
        log.warning("%d parameters had no optimizer state (never updated); their moments start at zero: %s",
                    len(fresh), ", ".join(fresh[:5]))
    g = groups[0]
    if tuple(g.get("betas", (0.9, 0.999))) != (0.9, 0.999) or float(g.get("eps", 1e-8)) != 1e-8:
        log.warning("the old optimizer used betas %s and eps %s; enstack continues with (0.9, 0.999) and 1e-8",
                    g.get("betas"), g.get("eps"))
    return out, label


def _old_position(src: Dict[str, Any], windows_per_epoch: int) -> Tuple[int, float]:
    """(epoch index, share of that epoch done) of the old run."""
    if src["format"].startswith("transformers"):
        epoch = src["epoch"]
        if not isinstance(epoch, (int, float)):  # no epoch recorded: place it by the optimizer step
            done, within = divmod(src["global_step"], windows_per_epoch)
            return done, within / windows_per_epoch
        return int(math.floor(epoch)), float(epoch) - math.floor(epoch)
    epoch, step, total = src["pipeline_epoch"], src["pipeline_step"], src["total_batches"]
    if step == 0 or (total and step >= total):  # the 1-based epoch `epoch` completed
        return epoch, 0.0
    if not total:
        raise CheckpointError("training_state.pth stops mid-epoch but lacks total_batches, so the share of the "
                              "epoch done is unknown; import a checkpoint taken at an epoch end.")
    return epoch - 1, step / total


def _check_labels(old: Dict[str, Any], new: Dict[str, Any]) -> None:
    """The classifier's rows follow label indices; warn when the old run named them differently."""
    names = [str(v) for _, v in sorted((old.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
    ours = [str(v) for _, v in sorted((new.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
    if names and names != [f"LABEL_{i}" for i in range(len(names))] and names != ours:
        log.warning("the old run's labels %s differ from this run's %s; class i of the old head continues as "
                    "this run's class i, so check that the orders mean the same classes", names, ours)


def import_checkpoint(source: PathLike, cfg, progress: bool = False) -> Path:
    """Writes ``source`` as the first checkpoint of the run ``cfg`` describes and returns its path."""
    from enstack.ckpt import tools as ckpt_tools
    from enstack import model as es_model
    from enstack._C.data import EpochPlan
    from enstack._C.train import lr_multiplier, warmup_steps_for
    from enstack.trainer import Trainer

    src_dir = Path(source)
    src = _read_source(src_dir)
    checkpoints = Path(cfg.run.output_dir) / _ckpt.CHECKPOINTS_DIR
    roots = [checkpoints] + ([Path(cfg.run.mirror_dir) / _ckpt.CHECKPOINTS_DIR] if cfg.run.mirror_dir else [])
    existing = ckpt_tools.resume_candidate(roots)
    if existing is not None:
        raise ConfigError(f"the run already has a checkpoint that would resume instead ({existing}); import into "
                          "a new run.output_dir (and mirror_dir) so the imported state is the one that resumes.")
    trainer = Trainer(cfg)
    prepared = trainer.prepare(progress)  # the exact model, token stores and options fit(resume=True) will use
    src_model = es_model.load(src_dir)
    _check_labels(es_model.config_of(src_model), es_model.config_of(trainer.model))
    weights = {k: v.detach().float().contiguous() for k, v in src_model.state_dict().items()}
    target = trainer.model.state_dict()
    wrong = sorted(k for k in set(weights) | set(target)
                   if k not in weights or k not in target or weights[k].shape != target[k].shape)
    if wrong:
        raise CheckpointError(f"the weights in {src_dir} do not fit the model of this config (differing: "
                              f"{', '.join(wrong[:6])}). Use the same model, vocabulary and num_labels.")
    names = [n for n, _ in trainer.model.named_parameters()]
    shapes = {n: p.shape for n, p in trainer.model.named_parameters()}
    moments, order_label = _map_moments(src["optimizer"], shapes, names,
                                        json.loads((src_dir / "config.json").read_text()))

    splits = prepared.splits
    t, train = cfg.train, splits["train"].open()
    windows = EpochPlan(len(train), t.batch_size, cfg.run.seed, 0).windows(t.grad_accum)
    per_epoch, batches = len(windows), -(-len(train) // t.batch_size)
    total_steps = per_epoch * t.epochs
    if src["global_step"] is None:
        src["global_step"] = int(round(max((float(m) for k, m in moments.items() if k.endswith(".step")), default=0)))
    step = src["global_step"]
    epoch, share = _old_position(src, per_epoch)
    k = int(round(share * per_epoch))
    if k >= per_epoch:
        epoch, k = epoch + 1, 0
    if epoch >= t.epochs:
        raise ConfigError(f"the imported run already completed {epoch} epochs and train.epochs is {t.epochs}; "
                          "raise train.epochs to continue training it.")
    cursor = windows[k]["first_batch"] if k else 0
    if step != epoch * per_epoch + k:
        log.warning("the old run's optimizer step %d and its position (epoch %d, %.1f%% done) disagree with this "
                    "config's %d steps per epoch (batch size, accumulation or data changed): training continues at "
                    "the position, and the learning-rate schedule at step %d of %d", step, epoch + 1,
                    100 * share, per_epoch, step, total_steps)
    warmup = t.warmup_steps or warmup_steps_for(t.warmup_ratio, total_steps)
    lr = t.learning_rate * lr_multiplier(t.lr_schedule, step, warmup, total_steps)
    old_lr = (src.get("scheduler") or {}).get("_last_lr")

    precision = prepared.precision
    extra = dict(moments, **{_ckpt.RNG_CPU_KEY: torch.Generator().manual_seed(cfg.run.seed).get_state()})
    if precision == "fp16":
        scaler = src.get("scaler") or {}
        extra[_ckpt.SCALER_PREFIX + "scale"] = torch.tensor(float(scaler.get("scale", 2.0**16)), dtype=torch.float32)
        extra[_ckpt.SCALER_PREFIX + "growth_tracker"] = torch.tensor(int(scaler.get("_growth_tracker", 0)),
                                                                     dtype=torch.int32)
    eval_split = splits.get("validation")
    imported = {"path": str(src_dir.resolve()), "format": src["format"], "global_step": step,
                "epoch": epoch + share, "parameter_order": order_label}
    # The state of a run that has not started, at the old run's position; the C++ schema
    # refuses a key it does not know and fills and types the rest.
    state = dict(_ckpt.default_trainer_state(), epoch=epoch, batch_cursor=cursor, global_step=step,
                 epochs_completed=epoch,
                 num_threads=cfg.run.num_threads if cfg.run.num_threads > 0 else torch.get_num_threads(),
                 train_fingerprint=train.fingerprint,
                 eval_fingerprint=eval_split.open().fingerprint if eval_split else "",
                 config_fingerprint=cfg.fingerprint(), imported_from=imported)
    run_options = {"epochs": t.epochs, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                   "learning_rate": t.learning_rate, "seed": cfg.run.seed, "precision": precision,
                   "lr_schedule": t.lr_schedule, "total_steps": total_steps, "warmup_steps": warmup}
    out = Path(_ckpt.write_full_checkpoint(str(checkpoints), es_model.config_of(trainer.model), weights, extra, state,
                                           run_options, {"imported_from": imported["path"]}))
    check = ckpt_tools.verify(out)
    if not check["ok"]:
        raise CheckpointError(f"the imported checkpoint {out} does not verify: {'; '.join(check['problems'])}")
    log.info("imported %s (%s): optimizer step %d, epoch %d/%d at batch %d/%d (%.1f%%), AdamW moments of %d "
             "parameters (%s); learning rate %.3g on this config's %s schedule (the old scheduler's last: %s)",
             src_dir, src["format"], step, epoch + 1, t.epochs, cursor, batches, 100 * cursor / batches,
             len(names), order_label, lr, t.lr_schedule, old_lr)
    log.warning("the data order of the old run cannot be reproduced: the resumed run continues at epoch %d, batch "
                "%d, with that epoch's batch order drawn fresh from run.seed %d, so some examples of this epoch may "
                "be seen twice and others not at all. Weights, AdamW moments and the optimizer step are exact.",
                epoch + 1, cursor, cfg.run.seed)
    return out
