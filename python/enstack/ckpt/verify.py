"""Checkpoint verification: the manifest, every file's size and checksum, and every tensor.

``verify`` collects every problem it finds rather than stopping at the first: the
C++ manifest check (sizes, FNV-1a checksums), per-file statuses when that fails,
each safetensors file parsed strictly and loaded in full (``read_safetensors``), the
model built from the weights, and for full checkpoints the trainer state and that
the AdamW moments fit the weights.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from enstack._C import CheckpointError
from enstack._C import ckpt as _ckpt

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["check_files", "check_manifest", "foreign_hint", "read_json", "read_manifest", "read_safetensors", "section", "verify"]

MANIFEST = "MANIFEST.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_MAX_HEADER = 100 * 2**20
STATE_KEYS = ("epoch", "batch_cursor", "global_step", "skipped_steps", "epochs_completed", "finished",
              "early_stopped", "best_metric", "best_step", "patience_counter", "num_threads",
              "train_fingerprint", "eval_fingerprint", "config_fingerprint")


# -- safetensors, read strictly -------------------------------------------------------------------
def read_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, loaded in full (copies, detached from the file).

    Stricter than loaders that read lazily: the header must be a JSON object whose
    entries have known dtypes, shapes that match their byte ranges, and byte ranges
    that tile the data section exactly. Raises ``CheckpointError`` saying what is wrong.
    """
    path = Path(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid safetensors file: {what}. The file is damaged; "
                               "use an older checkpoint.")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > min(size - 8, _MAX_HEADER):
            raise bad(f"header length {n} does not fit the {size}-byte file")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise bad(f"the header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise bad("the header is not a JSON object")
        header.pop("__metadata__", None)
        data_len = size - 8 - n
        spans: List[Tuple[int, int, str]] = []
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = [int(d) for d in entry["shape"]]
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise bad(f"tensor '{name}' has a malformed entry {str(entry)[:120]}") from None
            numel = math.prod(shape)
            if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_len:
                raise bad(f"tensor '{name}' has shape {shape} and bytes {begin}..{end} of {data_len}")
            if end - begin != numel * dtype.itemsize:
                raise bad(f"tensor '{name}' of shape {shape} {entry['dtype']} needs {numel * dtype.itemsize} "
                          f"bytes, its range has {end - begin}")
            spans.append((begin, end, name))
        spans.sort()
        cursor = 0
        for begin, end, name in spans:
            if begin != cursor:
                raise bad(f"tensor '{name}' starts at byte {begin}, expected {cursor} (overlap or gap)")
            cursor = end
        if cursor != data_len:
            raise bad(f"the tensors cover {cursor} of {data_len} data bytes")
        if data_len == 0:
            return {name: torch.empty([int(d) for d in header[name]["shape"]], dtype=_DTYPES[header[name]["dtype"]])
                    for name in header}
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        return {name: _copy_out(buffer, header[name], 8 + n + begin) for begin, _, name in spans}
    finally:
        buffer.close()


def _copy_out(buffer: mmap.mmap, entry: Dict[str, Any], offset: int) -> torch.Tensor:
    dtype, shape = _DTYPES[entry["dtype"]], [int(d) for d in entry["shape"]]
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(shape).clone()


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
    """Checks one file's checksum with the C++ verifier (a one-file manifest in a scratch dir)."""
    scratch = Path(tempfile.mkdtemp(prefix="enstack-verify-"))
    try:
        os.symlink(path.resolve(), scratch / "file")
        manifest = {"format": "enstack-checkpoint", "version": 1, "step": 0, "kind": "file",
                    "files": [dict(entry, name="file")], "extra": {}}
        (scratch / MANIFEST).write_text(json.dumps(manifest))
        _ckpt.verify(str(scratch))
        return None
    except CheckpointError:
        return "checksum mismatch (corrupted)"
    except OSError as e:
        return f"checksum not checked ({e})"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    if "model.safetensors" in loaded and (path / "config.json").is_file():
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
    doc = read_json(path / "trainer_state.json", problems)
    if doc is None and not problems:
        problems.append("trainer_state.json is missing")
    elif doc is not None:
        state = section(doc, "state")
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            problems.append(f"trainer_state.json lacks {', '.join(missing)}")
        if isinstance(state.get("swa_count"), int) and state["swa_count"] > 0 and "swa.safetensors" not in loaded:
            problems.append(f"trainer_state.json records {state['swa_count']} SWA updates but swa.safetensors "
                            "is missing or unreadable")
    weights, extra = loaded.get("model.safetensors"), loaded.get("optimizer.safetensors")
    if weights is not None and extra is not None:
        if "rng.cpu" not in extra:
            problems.append("optimizer.safetensors lacks the RNG state rng.cpu")
        for name, w in weights.items():
            for suffix in (".exp_avg", ".exp_avg_sq"):
                m = extra.get(name + suffix)
                if m is None or m.shape != w.shape:
                    problems.append(f"optimizer.safetensors: {name + suffix} is missing or mis-shaped")
                    break
    return problems
