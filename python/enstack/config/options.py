"""The one translation of a ``Config`` into the native trainer's options (``enstack._C.train.Trainer``).

``trainer_options`` is the only place that maps config keys to option names; the
trainer calls it, nothing else builds these options. ``resolve_device`` and
``resolve_precision`` fill in ``auto``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from enstack.config.schema import Config

__all__ = ["resolve_device", "resolve_precision", "trainer_options"]


def resolve_device(cfg: Config) -> str:
    """run.device with ``auto`` filled in: ``cuda`` when available, else ``cpu``."""
    device = cfg.run.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(cfg: Config, device: str) -> str:
    """train.precision with ``auto`` filled in for ``device``: fp16 on CUDA, else fp32."""
    p = cfg.train.precision
    if p == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    return p


def trainer_options(cfg: Config, device: str, pad_id: int, label_names: List[str],
                    allow_changes: bool = False) -> Dict[str, Any]:
    """The native trainer's options for ``cfg`` on ``device`` (as ``resolve_device`` gives it).

    ``pad_id`` is the model's padding token, ``label_names`` the classes in label-index
    order, ``allow_changes`` lets a resume accept changed data or configuration.
    """
    t, r = cfg.train, cfg.run
    # null is "off" and goes to the native trainer as None, which reads it as the option's off
    # value (_C.train.trainer_options documents each); the config's own rules are applied here:
    # save_steps null saves at every evaluation, greater_is_better null follows the metric.
    greater = t.greater_is_better if t.greater_is_better is not None else t.metric_for_best not in ("loss", None)
    return {
        "output_dir": str(r.output_dir), "seed": r.seed, "num_threads": r.num_threads, "device": device,
        "epochs": t.epochs, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
        "learning_rate": t.learning_rate, "weight_decay": t.weight_decay, "warmup_ratio": t.warmup_ratio,
        "warmup_steps": t.warmup_steps or None, "lr_schedule": t.lr_schedule, "max_grad_norm": t.max_grad_norm,
        "precision": resolve_precision(cfg, device), "eval_strategy": t.eval_strategy,
        "eval_steps": t.eval_steps,
        "save_steps": t.save_steps if t.save_steps is not None else t.eval_steps,
        "save_minutes": t.save_minutes, "auto_microbatch": t.auto_microbatch,
        "save_total_limit": t.save_total_limit, "logging_steps": t.logging_steps,
        "metric_for_best": t.metric_for_best, "greater_is_better": greater,
        "patience": t.early_stopping.patience, "threshold": t.early_stopping.threshold,
        "group_by_length": cfg.data.group_by_length, "pad_id": pad_id,
        "max_length": cfg.model.max_length, "label_names": label_names,
        "config_fingerprint": cfg.fingerprint(), "allow_changes": allow_changes,
        "mirror_dir": str(r.mirror_dir) if r.mirror_dir else None, "save_coalesce": t.save_coalesce,
        "mirror_lease_seconds": float(r.mirror_lease_seconds),
        "best_model_dtype": t.best_model_dtype, "swa_enabled": t.swa.enabled,
        "swa_start_epoch": t.swa.start_epoch, "swa_every_steps": t.swa.every_steps,
        "swa_lr": t.swa.lr, "loss_scale": t.loss_scale,
    }
