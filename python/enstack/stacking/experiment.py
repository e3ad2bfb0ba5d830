"""The EnStack experiment: every base model alone, every subset of them stacked by every meta-classifier.

``run_table`` takes a ``MetaDataset`` (from either protocol) and fits, for each
non-empty subset of the base models (each one alone, every pair, ..., all of them)
and each meta-classifier, a meta-model on the meta-training rows; it scores every
model alone (its own most probable class) and every stack on the test rows, marks
the best stack, and writes under ``output_dir``:

    results.md / results.csv / results.json      the table
    test_predictions.npz + test_predictions.json  every row's test probabilities, ids, labels
    meta/<models>/<classifier>/                   the saved meta-models (enstack.stacking.load_meta_model)
    plots/*.png                                   confusion matrices and ROC curves

``stack`` runs the whole experiment from a stacking config.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from enstack._C import ConfigError
from enstack.stacking import protocols
from enstack.stacking.config import META_CLASSIFIERS, StackConfig, load_stack_config
from enstack.stacking.dataset import MetaDataset
from enstack.stacking.meta import fit_meta
from enstack.stacking.report import METRICS, StackReport, compute_metrics, mark_best

log = logging.getLogger("enstack")

__all__ = ["run_table", "stack"]


def _row(key: str, models: Sequence[str], meta: Optional[str], kind: str, metrics: Dict[str, Any]) -> Dict[str, Any]:
    return {"key": key, "models": list(models), "meta": meta, "kind": kind,
            **{m: metrics[m] for m in METRICS}, "count": metrics["count"], "confusion": metrics["confusion"],
            "best": False}


def run_table(ds: MetaDataset, output_dir: Union[str, os.PathLike], meta_classifiers: Sequence[str] = META_CLASSIFIERS,
              features: str = "probabilities", seed: int = 42, select_by: str = "f1_weighted", checkpoint: str = "",
              plots: bool = True, n_jobs: int = 1, info: Optional[Dict[str, Any]] = None) -> StackReport:
    """Fits and scores every row of the table; writes results, test predictions, meta-models and plots."""
    if select_by not in METRICS:
        raise ConfigError(f"select_by must be one of {', '.join(METRICS)}, not {select_by!r}.")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    probabilities: Dict[str, np.ndarray] = {}
    y_train, y_test = ds.train.labels, ds.test.labels
    for m in ds.models:
        key = f"{m}:base"
        probabilities[key] = np.asarray(ds.test.outputs[m]["probabilities"], dtype=np.float64)
        rows.append(_row(key, [m], None, "base", compute_metrics(probabilities[key], y_test)))
    for size in range(1, len(ds.models) + 1):
        for combo in itertools.combinations(ds.models, size):
            x_train, names = ds.features("train", combo, features)
            x_test, _ = ds.features("test", combo, features)
            for name in meta_classifiers:
                meta_info = dict(info or {}, protocol=ds.protocol, seed=seed, checkpoint=checkpoint,
                                 base_checkpoints={m: ds.checkpoints.get(m, []) for m in combo})
                model = fit_meta(name, x_train, y_train, combo, features, ds.label_names, names, seed, n_jobs,
                                 meta_info)
                key = f"{'+'.join(combo)}:{name}"
                probabilities[key] = model.predict_proba(x_test)
                model.save(out / "meta" / "+".join(combo) / name)
                rows.append(_row(key, combo, name, "stack", compute_metrics(probabilities[key], y_test)))
                log.debug("%s: accuracy %.4f", key, rows[-1]["accuracy"])
    best = mark_best(rows, select_by)
    report = StackReport(rows=rows, best=best, select_by=select_by, label_names=list(ds.label_names),
                         protocol=ds.protocol, features=features, checkpoint=checkpoint, output_dir=out)
    report.write()
    np.savez(out / "test_predictions.npz", labels=y_test, **{k: v for k, v in probabilities.items()})
    (out / "test_predictions.json").write_text(json.dumps(
        {"ids": list(ds.test.ids), "label_names": list(ds.label_names), "rows": list(probabilities),
         "meta_training_rows": len(ds.train.ids)}, indent=1))
    report.files["test_predictions"] = str(out / "test_predictions.npz")
    if plots:
        from enstack.stacking.plots import write_plots

        report.files["plots"] = str(out / "plots")
        write_plots(out, rows, probabilities, np.asarray(y_test), ds.label_names, best)
    return report


def stack(config: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], StackConfig],
          overrides: Optional[Union[Mapping[str, Any], Sequence[str]]] = None, *,
          fit_base: Optional[protocols.FitBase] = None, progress: bool = True) -> StackReport:
    """Runs the EnStack experiment of a stacking config and returns its results table.

    ``config`` is a stacking YAML file (or files composed left to right, or a
    ``StackConfig``); ``overrides`` are dotted keys (``{"stack.protocol": "oof"}``).
    Base models are trained or resumed first (``stack.train_base_models``), their
    predictions written beside their checkpoints and reused while fresh. ``fit_base``
    replaces the fold fine-tuning of the oof protocol (see ``protocols.out_of_fold``).
    """
    if isinstance(config, StackConfig):
        cfg = config if not overrides else StackConfig.from_dict(_merged(config, overrides))
    else:
        cfg = load_stack_config(config, overrides)
    s = cfg.stack
    checkpoint = s.resolved_checkpoint()
    kinds = {"probabilities": ("probabilities",), "logits": ("probabilities", "logits"),
             "both": ("probabilities", "logits")}[s.features]
    configs = cfg.base_configs()
    out = Path(cfg.run.output_dir)
    for name, base in configs.items():
        if Path(base.run.output_dir).resolve() == out.resolve():
            raise ConfigError(f"run.output_dir of the stacking run is the run directory of base model {name}; "
                              "give the stacking run its own directory.")
    if s.protocol == "paper":
        ds = protocols.paper_dataset(configs, checkpoint, kinds, train=s.train_base_models,
                                     batch_size=s.predict_batch_size, progress=progress)
    else:
        fitter = protocols.NativeFoldFitter(configs, out, checkpoint, kinds, s.predict_batch_size, progress)
        pool, test = fitter.pools()
        ds = protocols.out_of_fold(list(configs), pool, test, s.folds, cfg.run.seed, fit_base or fitter, kinds)
    info = {"base_models": {n: {"config": list(f) if isinstance(f, tuple) else [f], "output_dir": configs[n].run.output_dir}
                            for n, f in s.base_models.items()}}
    n_jobs = cfg.run.num_threads or (os.cpu_count() or 1)
    report = run_table(ds, out, s.meta_classifiers, s.features, cfg.run.seed, s.select_by, checkpoint, s.plots,
                       n_jobs, info)
    best = report.best_row
    log.info("best stack by %s: %s + %s: accuracy %.2f%%, F1 (w) %.2f%%", s.select_by, " + ".join(best["models"]),
             best["meta"], 100 * best["accuracy"], 100 * best["f1_weighted"])
    return report


def _merged(cfg: StackConfig, overrides) -> Dict[str, Any]:
    from enstack.config.loading import deep_merge, overrides_tree

    return deep_merge(cfg.to_dict(), overrides_tree(overrides))
