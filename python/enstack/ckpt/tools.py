"""Checkpoint tools behind ``enstack ckpt``: list, inspect and export (verify is in ``enstack.ckpt.verify``).

Everything here reads damaged input without crashing: ``inspect`` reports what it
can and what is wrong, and ``list_run`` shows each checkpoint of a run and its
mirror with the reason an invalid one is invalid and which one ``fit(resume=True)``
would start from. ``export`` writes a Hugging Face model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from enstack._C import CheckpointError
from enstack._C import ckpt as _ckpt
from enstack.ckpt.verify import (check_files, check_manifest, foreign_hint, read_json, read_manifest,
                                  read_safetensors, section, state_problem, verify)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["check_files", "export", "final_checkpoint", "format_inspect", "format_list", "inspect", "list_run",
           "read_safetensors", "resume_candidate", "run_roots", "verify"]


# -- inspect --------------------------------------------------------------------------------------
def _batches_per_epoch(path: Path, state: Dict[str, Any], options: Dict[str, Any]) -> Optional[int]:
    """Exact when the run's training token store (<run>/data/train.tokens) is the checkpoint's."""
    store_path = path.parent.parent / "data" / "train.tokens"
    batch_size = options.get("batch_size")
    if not store_path.is_file() or not isinstance(batch_size, int) or batch_size < 1:
        return None
    try:
        from enstack._C.data import TokenStore

        store = TokenStore(str(store_path))
        if store.fingerprint != state.get("train_fingerprint"):
            return None
        return -(-len(store) // batch_size)
    except Exception:  # noqa: BLE001 - a damaged store only costs the exact figure
        return None


def _position(path: Path, state: Dict[str, Any], options: Dict[str, Any]) -> Dict[str, Any]:
    cursor, accum = state.get("batch_cursor"), options.get("grad_accum") or 1
    out: Dict[str, Any] = {"batches_per_epoch": None, "share_of_epoch": None}
    if not isinstance(cursor, int):
        return out
    batches = _batches_per_epoch(path, state, options)
    if batches:
        out.update(batches_per_epoch=batches, share_of_epoch=cursor / batches)
        return out
    total, epochs = options.get("total_steps"), options.get("epochs")
    if isinstance(total, int) and isinstance(epochs, int) and epochs > 0 and total > 0 and isinstance(accum, int):
        windows = total // epochs  # optimizer steps per epoch
        if windows > 0:
            out.update(share_of_epoch=min(1.0, -(-cursor // accum) / windows), share_basis="optimizer steps")
    return out


def inspect(path: PathLike) -> Dict[str, Any]:
    """What a checkpoint directory holds and what is wrong with it. Never raises on bad input."""
    path = Path(path)
    report: Dict[str, Any] = {"path": str(path), "problems": [], "files": [], "state": None}
    problems: List[str] = report["problems"]
    if not path.is_dir():
        problems.append("does not exist" if not path.exists() else "is not a directory")
        report["valid"] = False
        return report
    manifest, report["files"], found = check_manifest(path)
    problems.extend(found)
    if manifest is not None:
        report.update(kind=manifest.get("kind"), step=manifest.get("step"), extra=manifest.get("extra"))
    doc = None if foreign_hint(path) else read_json(path / _ckpt.STATE_FILE, problems)
    if doc is not None:
        state, options = section(doc, "state"), section(doc, "options")
        why = state_problem(state)
        if why:
            problems.append(why)
        # The state as resume reads it (every key, typed) when it reads; the metrics stay in the file.
        view = {k: v for k, v in (state if why else _ckpt.trainer_state(state)).items()
                if not isinstance(v, (dict, list))}
        view.update(epochs=options.get("epochs"), grad_accum=options.get("grad_accum"),
                    batch_size=options.get("batch_size"), swa_count=state.get("swa_count", 0),
                    epoch_complete=state.get("epoch_complete"), imported_from=state.get("imported_from"))
        view.update(_position(path, state, options))
        report["state"] = view
    elif report.get("kind") == "full" and not (path / _ckpt.STATE_FILE).exists():
        problems.append(f"{_ckpt.STATE_FILE} is missing")
    report["valid"] = not problems
    return report


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _epoch_text(epoch: Any, cursor: Any, epochs: Any = None) -> str:
    """The position in words, epochs 1-based as in the training log."""
    if not isinstance(epoch, int) or not isinstance(cursor, int):
        return "unknown"
    of = f" of {epochs}" if isinstance(epochs, int) else ""
    if cursor > 0:
        return f"{epoch + 1}{of}, in progress"
    return "not started" if epoch == 0 else f"{epoch}{of} complete"


def format_inspect(report: Dict[str, Any]) -> str:
    """The human-readable form of ``inspect``'s report."""
    lines = [f"checkpoint   {report['path']}"]
    if "kind" in report:
        lines.append(f"kind         {report['kind']} at optimizer step {_fmt(report.get('step'))}")
    s = report.get("state")
    if s:
        lines.append(f"epoch        {_epoch_text(s.get('epoch'), s.get('batch_cursor'), s.get('epochs'))} "
                     f"(epochs completed {_fmt(s.get('epochs_completed'))}; finished: "
                     f"{'yes' if s.get('finished') else 'no'}{'; early stopped' if s.get('early_stopped') else ''})")
        share = s.get("share_of_epoch")
        of = f" of {s['batches_per_epoch']}" if s.get("batches_per_epoch") else ""
        basis = f", by {s['share_basis']}" if s.get("share_basis") else ""
        done = " (at an epoch boundary)" if s.get("batch_cursor") == 0 else \
            f" ({100 * share:.1f}% of the epoch done{basis})" if isinstance(share, (int, float)) else ""
        lines.append(f"batch        {_fmt(s.get('batch_cursor'))}{of}{done}")
        lines.append(f"optimizer    step {_fmt(s.get('global_step'))} (fp16-skipped {_fmt(s.get('skipped_steps'))})")
        lines.append(f"best metric  {_fmt(s.get('best_metric'))} at step {_fmt(s.get('best_step'))} "
                     f"(patience counter {_fmt(s.get('patience_counter'))})")
        lines.append(f"SWA count    {_fmt(s.get('swa_count'))}")
        world, batch = s.get("world_size"), s.get("batch_size")
        if isinstance(world, int):
            per_rank = f" ({batch // world} per rank)" if isinstance(batch, int) and world > 1 else ""
            lines.append(f"ranks        written by {world} data-parallel rank(s); global batch {_fmt(batch)}{per_rank}; "
                         f"micro-batches per batch {_fmt(s.get('microbatch_splits'))}")
        lines.append(f"data         train {_fmt(s.get('train_fingerprint'))}  eval {_fmt(s.get('eval_fingerprint'))}"
                     f"  config {_fmt(s.get('config_fingerprint'))[:16]}")
        if s.get("imported_from"):
            lines.append(f"imported     from {s['imported_from']} (the old run's data order is not reproduced)")
    elif report.get("extra"):
        lines.append(f"extra        {json.dumps(report['extra'])}")
    for f in report["files"]:
        lines.append(f"  {f['name']:<24} {_fmt(f.get('size')):>12}  {f['status']}")
    lines.append("valid" if report["valid"] else "INVALID:\n" + "\n".join(f"  - {p}" for p in report["problems"]))
    return "\n".join(lines)


# -- list -----------------------------------------------------------------------------------------
def _mirror_root(mirror_dir: PathLike) -> Path:
    mirror = Path(mirror_dir)
    return mirror / _ckpt.CHECKPOINTS_DIR if (mirror / _ckpt.CHECKPOINTS_DIR).is_dir() else mirror


def resume_candidate(roots: List[Path]) -> Optional[Path]:
    """The directory ``fit(resume=True)`` starts from (the trainer's own choice, ``_C.ckpt.resume_checkpoint``);
    None when there is none, or when none is valid (resume then refuses, and each shows as invalid)."""
    try:
        found = _ckpt.resume_checkpoint([str(r) for r in roots])
    except CheckpointError:
        return None
    return Path(found) if found else None


def run_roots(cfg) -> List[Path]:
    """Where a run's checkpoints are: ``<output_dir>/checkpoints``, then the mirror's."""
    roots = [Path(cfg.run.output_dir) / _ckpt.CHECKPOINTS_DIR]
    if cfg.run.mirror_dir:
        roots.append(Path(cfg.run.mirror_dir) / _ckpt.CHECKPOINTS_DIR)
    return roots


def final_checkpoint(cfg) -> Path:
    """The run's final weights: the checkpoint ``fit(resume=True)`` would continue from (the
    newest valid full one, local or mirrored, ``recovery`` included). ``CheckpointError`` when
    there is none, or (listing each and why) when none is valid."""
    found = _ckpt.resume_checkpoint([str(r) for r in run_roots(cfg)])
    if found is None:
        raise CheckpointError(f"no complete training checkpoint under {run_roots(cfg)[0]}; train the model first "
                              "(`enstack train CONFIG`).")
    return Path(found)


def list_run(run_dir: PathLike, mirror_dir: Optional[PathLike] = None) -> List[Dict[str, Any]]:
    """Every checkpoint directory under <run_dir>/checkpoints (and the mirror), newest step last.

    A ``run_dir`` that is not a directory raises ``CheckpointError``: a mistyped path must not
    read as a run without checkpoints."""
    run = Path(run_dir)
    if not run.is_dir():
        where = "is a file" if run.exists() else "does not exist"
        raise CheckpointError(f"'{run}' {where}: give a run directory (the run.output_dir of a config, which "
                              "holds checkpoints/).")
    roots = [("local", run / _ckpt.CHECKPOINTS_DIR)]
    if mirror_dir:
        roots.append(("mirror", _mirror_root(mirror_dir)))
    rows = []
    for where, root in roots:
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            manifest, why = read_manifest(d)
            extra = (manifest or {}).get("extra") or {}
            row = {"where": where, "name": d.name, "path": str(d), "kind": (manifest or {}).get("kind"),
                   "step": (manifest or {}).get("step"), "epoch": extra.get("epoch"),
                   "batch": extra.get("batch_cursor"), "valid": False, "why": why, "resume": False}
            if manifest is not None:
                try:
                    _ckpt.verify_checkpoint(str(d))
                    row["valid"] = True
                except CheckpointError as e:
                    row["why"] = str(e)
            rows.append(row)
    chosen = resume_candidate([root for _, root in roots])
    for row in rows:
        row["resume"] = chosen is not None and Path(str(row["path"])) == chosen
    rows.sort(key=lambda r: (r["step"] if isinstance(r["step"], int) else -1, r["where"], r["name"]))
    return rows


def format_list(rows: List[Dict[str, Any]]) -> str:
    """``list_run`` as a table; epochs are shown 1-based as in the training log."""
    if not rows:
        return "no checkpoints"
    lines = [f"{'where':<7} {'name':<22} {'kind':<5} {'step':>8}  {'epoch':<22} {'batch':>6}  status"]
    for r in rows:
        status = "valid" if r["valid"] else f"INVALID: {r['why']}"
        mark = "  <- resume starts here" if r["resume"] else ""
        epoch = _epoch_text(r["epoch"], r["batch"]) if r["kind"] == "full" else "-"
        lines.append(f"{r['where']:<7} {r['name']:<22} {_fmt(r['kind']):<5} {_fmt(r['step']):>8}  {epoch:<22} "
                     f"{_fmt(r['batch']):>6}  {status}{mark}")
    return "\n".join(lines)


# -- export ---------------------------------------------------------------------------------------
def export(path: PathLike, out_dir: PathLike, dtype: str = "float32") -> Path:
    """Writes a Hugging Face model directory (config.json + model.safetensors) from a checkpoint.

    The checkpoint is verified first; ``out_dir`` must not exist or be empty. The
    directory is written beside ``out_dir`` and renamed into place.
    """
    from enstack import model as es_model

    path, out = Path(path), Path(out_dir)
    result = verify(path)
    if not result["ok"]:
        raise CheckpointError(f"not exporting {path}: " + "; ".join(result["problems"])
                              + ". Export an older checkpoint (see `enstack ckpt list`).")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} exists and is not empty; choose a new directory.")
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        es_model.load(path).save_pretrained(temp, dtype=dtype)
        if out.exists():
            out.rmdir()
        os.replace(temp, out)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return out
