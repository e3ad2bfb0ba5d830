"""Checkpoint verification: the manifest, every file's size and checksum, and every tensor.

``verify`` collects every problem it finds rather than stopping at the first: the
C++ manifest check (sizes, FNV-1a checksums), per-file statuses when that fails,
each safetensors file parsed strictly and loaded in full (``read_safetensors``), the
model built from the weights, and for full checkpoints the trainer state and that
the AdamW moments fit the weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from enstack._C import CheckpointError, ModelError
from enstack._C import ckpt as _ckpt

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["check_files", "check_manifest", "foreign_hint", "read_json", "read_manifest", "read_safetensors", "section",
           "state_problem", "verify"]

# The format's names, defined once in C++ (enstack/train/checkpoint_format.h).
MANIFEST = _ckpt.MANIFEST_FILE


def state_problem(state: Any) -> Optional[str]:
    """Why a trainer_state.json ``state`` would not resume (read by the C++ schema), or None."""
    try:
        _ckpt.trainer_state(state)
        return None
    except CheckpointError as e:
        return str(e)


# -- safetensors, read strictly -------------------------------------------------------------------
def read_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, loaded in full (copies, detached from the file).

    Read by the C++ reader that resume uses, which checks the header strictly (known
    dtypes, shapes that match their byte ranges, ranges inside the data section and not
    overlapping). Raises ``CheckpointError`` saying what is wrong.
    """
    try:
        return _ckpt.read_safetensors(str(path))
    except ModelError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e} The file is damaged; use an older "
                              "checkpoint.") from None


# -- files against the manifest -------------------------------------------------------------------
def read_manifest(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    target = path / MANIFEST
    if not target.is_file():
        return None, f"no {MANIFEST}: the checkpoint was never completed (or is not an enstack checkpoint)"
    try:
        manifest = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return None, f"{MANIFEST} is unreadable ({e})"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None, f"{MANIFEST} is not an enstack manifest"
    return manifest, None


def _checksum_matches(path: Path, entry: Dict[str, Any]) -> Optional[str]:
    """One file against its manifest entry, with the checksum the C++ writer records."""
    try:
        matches = _ckpt.file_checksum(str(path)) == entry.get(_ckpt.MANIFEST_CHECKSUM_KEY)
        return None if matches else "checksum mismatch (corrupted)"
    except (CheckpointError, OSError) as e:
        return f"checksum not checked ({e})"


def member(path: Path, name: str) -> Optional[Path]:
    """``path / name`` when ``name`` is a plain file name (a manifest may be damaged or hostile)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return None
    return path / name


def check_files(path: PathLike, manifest: Optional[Dict[str, Any]], verified: bool) -> List[Dict[str, Any]]:
    """Each file listed in the manifest (and each one it does not list) with its status.

    ``verified``: the whole directory passed the C++ check, so no file needs a checksum of its own.
    """
    path = Path(path)
    if manifest is None or not isinstance(manifest.get("files"), list):
        return [{"name": p.name, "size": p.stat().st_size, "status": "unverifiable"}
                for p in sorted(path.iterdir()) if p.is_file()] if path.is_dir() else []
    entries = [e for e in manifest["files"] if isinstance(e, dict) and isinstance(e.get("name"), str)]
    rows = []
    for e in entries:
        target = member(path, e["name"])
        row = {"name": e["name"], "expected_size": e.get("size"), "size": None, "status": "ok"}
        if target is None:
            row["status"] = "not a plain file name"
        elif not target.is_file():
            row["status"] = "missing"
        else:
            row["size"] = target.stat().st_size
            if row["size"] != e.get("size"):
                row["status"] = f"size {row['size']} != {e.get('size')} in the manifest (truncated or partial)"
            elif not verified:
                row["status"] = _checksum_matches(target, e) or "ok"
        rows.append(row)
    listed = {e["name"] for e in entries} | {MANIFEST}
    for p in sorted(path.iterdir()):
        if p.name not in listed:
            rows.append({"name": p.name, "expected_size": None, "size": p.stat().st_size if p.is_file() else None,
                         "status": "not in the manifest (ignored)"})
    return rows


# -- verify ---------------------------------------------------------------------------------------
_FINE = ("ok", "not in the manifest (ignored)", "unverifiable")


def foreign_hint(path: Path) -> Optional[str]:
    """A hint when ``path`` is a Hugging Face / earlier-pipeline checkpoint rather than enstack's."""
    if (path / MANIFEST).exists() or not path.is_dir():
        return None
    markers = ("optimizer.pt", "training_state.pth", "pytorch_model.bin", "training_args.bin")
    if any((path / m).is_file() for m in markers):
        return (f"{path} looks like a Hugging Face Trainer or earlier-pipeline checkpoint, not an enstack one: "
                "continue it with `enstack ckpt import DIR CONFIG`")
    return None


def check_manifest(path: PathLike) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]], List[str]]:
    """(manifest, per-file rows, problems). The C++ manifest check (the one resume uses) is the
    verdict; when it fails, the manifest is read leniently and each file gets its own status."""
    path = Path(path)
    problems: List[str] = []
    manifest: Optional[Dict[str, Any]] = None
    try:
        manifest = _ckpt.verify_checkpoint(str(path))
    except CheckpointError as e:
        problems.append(str(e))
        if path.is_dir():
            manifest, _ = read_manifest(path)
    rows: List[Dict[str, Any]] = []
    try:
        rows = check_files(path, manifest, verified=not problems)
    except OSError as e:
        problems.append(f"cannot list the files ({e})")
    problems.extend(f"{r['name']}: {r['status']}" for r in rows if r["status"] not in _FINE)
    hint = foreign_hint(path)
    return manifest, rows, problems + ([hint] if hint else [])


def section(doc: Dict[str, Any], key: str) -> Dict[str, Any]:
    """``doc[key]`` when it is a JSON object, else an empty one."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def read_json(path: Path, problems: List[str]) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(value, dict):
            return value
        problems.append(f"{path.name} is not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        problems.append(f"{path.name} is unreadable ({e})")
    return None


def verify(path: PathLike) -> Dict[str, Any]:
    """Every check: manifest, sizes, checksums, each tensor loaded, the model built, the state read.

    Returns ``{"ok", "problems", "manifest", "tensors"}``; ``ok`` is True only when
    there are no problems.
    """
    path = Path(path)
    manifest, _, problems = check_manifest(path)
    tensors = 0
    loaded: Dict[str, Dict[str, torch.Tensor]] = {}
    files = (manifest or {}).get("files")
    names = [e["name"] for e in files if isinstance(e, dict) and isinstance(e.get("name"), str)] \
        if isinstance(files, list) else []
    for name in names:
        target = member(path, name) if name.endswith(".safetensors") else None
        if target is None or not target.is_file():
            continue
        try:
            loaded[name] = read_safetensors(target)
        except (CheckpointError, OSError) as e:
            problems.append(str(e))
            continue
        tensors += len(loaded[name])
        bad = [k for k, t in loaded[name].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            problems.append(f"{name}: non-finite values in {', '.join(bad[:5])}")
    if _ckpt.MODEL_FILE in loaded and (path / _ckpt.CONFIG_FILE).is_file():
        try:
            from enstack import model as es_model

            es_model.load(path)
        except Exception as e:  # noqa: BLE001 - any failure to build the model is a finding
            problems.append(f"the model does not load: {e}")
    if manifest and manifest.get("kind") == "full":
        problems.extend(_full_state_problems(path, loaded))
    return {"ok": not problems, "problems": problems, "manifest": manifest, "tensors": tensors}


def _full_state_problems(path: Path, loaded: Dict[str, Dict[str, torch.Tensor]]) -> List[str]:
    problems: List[str] = []
    doc = read_json(path / _ckpt.STATE_FILE, problems)
    if doc is None and not problems:
        problems.append(f"{_ckpt.STATE_FILE} is missing")
    elif doc is not None:
        state = section(doc, "state")
        why = state_problem(state)
        if why:
            problems.append(why)
        swa = state.get("swa_count")
        if isinstance(swa, int) and swa > 0 and _ckpt.SWA_FILE not in loaded:
            problems.append(f"{_ckpt.STATE_FILE} records {swa} SWA updates but {_ckpt.SWA_FILE} is missing or "
                            "unreadable")
    weights, extra = loaded.get(_ckpt.MODEL_FILE), loaded.get(_ckpt.OPTIMIZER_FILE)
    if weights is not None and extra is not None:
        if _ckpt.RNG_CPU_KEY not in extra:
            problems.append(f"{_ckpt.OPTIMIZER_FILE} lacks the RNG state {_ckpt.RNG_CPU_KEY}")
        for name, w in weights.items():
            for suffix in (".exp_avg", ".exp_avg_sq"):
                m = extra.get(name + suffix)
                if m is None or m.shape != w.shape:
                    problems.append(f"{_ckpt.OPTIMIZER_FILE}: {name + suffix} is missing or mis-shaped")
                    break
    return problems
