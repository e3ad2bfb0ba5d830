"""Resolves ``model.name_or_path`` to local files: a model directory, a config.json, or a Hugging Face id.

A local directory (config.json + weights + tokenizer files) and, for ``from_scratch``,
a config.json are used as they are. Anything else that looks like a Hugging Face id
(``microsoft/codebert-base``) is fetched with ``huggingface_hub.snapshot_download``
into the Hugging Face cache, limited to what enstack reads: config, tokenizer files
and one weight format (safetensors when the repository has them, else
``pytorch_model.bin``). Offline (``HF_HUB_OFFLINE=1`` or no network) a cached copy is
used when there is one; otherwise a ``ModelError`` explains how to give a local path.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Optional

from enstack._C import ModelError

log = logging.getLogger("enstack")

__all__ = ["allow_patterns", "is_hub_id", "resolve", "resolve_dir"]

CONFIG_FILES = ["config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "*.model", "vocab.txt"]
SAFETENSORS_FILES = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]
BIN_FILES = ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]

# owner/name or name, Hugging Face's characters; a second slash makes it a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def is_hub_id(name: str) -> bool:
    """True when ``name`` has the shape of a Hugging Face repository id (not a path)."""
    return bool(_HUB_ID.match(name)) and not name.endswith(".json") and ".." not in name


def allow_patterns(repo_files: Optional[List[str]], weights: bool = True) -> List[str]:
    """The files to fetch from a repository: config, tokenizer and one weight format."""
    patterns = CONFIG_FILES + TOKENIZER_FILES
    if not weights:
        return patterns
    has_safetensors = repo_files is None or any(f.endswith(".safetensors") for f in repo_files)
    has_bin = repo_files is None or any(f.endswith(".bin") for f in repo_files)
    # Both formats hold the same weights: fetch one (safetensors: no pickle, memory-mapped).
    return patterns + (SAFETENSORS_FILES if has_safetensors else []) + (BIN_FILES if has_bin and not
                                                                        has_safetensors else [])


def resolve(name_or_path: str, from_scratch: bool = False) -> Path:
    """A local path for ``name_or_path``: the directory (or, from scratch, a config .json) itself,
    or the snapshot directory of a Hugging Face id.

    Raises ``ModelError`` when the path does not exist or the id cannot be fetched.
    """
    from enstack import colab

    name = os.fspath(name_or_path)
    colab.check_drive_paths({}, {"model.name_or_path": name})
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        return local
    if local.is_file():
        if from_scratch and local.suffix == ".json":
            return local
        raise ModelError(f"model.name_or_path '{name}' is a file; give a model directory (config.json plus "
                         "weights)" + (", or a config .json with model.from_scratch: true." if not from_scratch
                                       else " or a config .json."))
    if not is_hub_id(name):
        raise ModelError(f"model.name_or_path '{name}' does not exist. Give an existing local model directory, "
                         "a config .json (with model.from_scratch: true), or a Hugging Face id such as "
                         "microsoft/codebert-base.")
    return _from_hub(name, weights=not from_scratch)


def resolve_dir(name_or_path: str, from_scratch: bool = False) -> Path:
    """Like ``resolve``, but a from-scratch config .json gives its directory (for tokenizer files)."""
    path = resolve(name_or_path, from_scratch)
    return path if path.is_dir() else path.parent


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _how_to_get_it_locally(repo_id: str) -> str:
    return (f"Download it where a network is available, `huggingface-cli download {repo_id} --local-dir "
            f"DIR` (or `hf download {repo_id} --local-dir DIR`), copy DIR here (e.g. to Drive), and set "
            "model.name_or_path to DIR (`--set model.name_or_path=DIR`).")


def _from_hub(repo_id: str, weights: bool) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise ModelError(f"model.name_or_path '{repo_id}' is not a local path, and huggingface_hub, which "
                         "fetches Hugging Face ids, is not installed: `pip install huggingface_hub`, or "
                         + _how_to_get_it_locally(repo_id)) from None
    not_found, gated = _hub_errors()
    if _offline():
        cached = _cached(huggingface_hub, repo_id, weights)
        if cached is not None:
            return cached
        raise ModelError(f"model.name_or_path '{repo_id}' is a Hugging Face id, but HF_HUB_OFFLINE is set and "
                         "it is not in the local Hugging Face cache. " + _how_to_get_it_locally(repo_id))
    try:
        files = huggingface_hub.list_repo_files(repo_id) if weights else None
        log.info("fetching %s from the Hugging Face Hub (config, tokenizer%s)", repo_id,
                 ", weights" if weights else "")
        path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=allow_patterns(files, weights)))
    except gated:  # before not_found: GatedRepoError subclasses RepositoryNotFoundError
        raise ModelError(f"'{repo_id}' is a gated model: accept its terms on huggingface.co and log in with "
                         "`huggingface-cli login`, or give a local model directory.") from None
    except not_found:
        raise ModelError(f"there is no model '{repo_id}' on the Hugging Face Hub (or it is private: log in "
                         "with `huggingface-cli login`). Check the id, or give a local model directory.") from None
    except Exception as e:  # noqa: BLE001 - connection errors differ between huggingface_hub versions
        cached = _cached(huggingface_hub, repo_id, weights)
        if cached is not None:
            log.warning("cannot reach the Hugging Face Hub (%s); using the cached copy of %s", e, repo_id)
            return cached
        raise ModelError(f"cannot fetch '{repo_id}' from the Hugging Face Hub ({type(e).__name__}: {e}); this "
                         "machine looks offline. " + _how_to_get_it_locally(repo_id)) from None
    _check_snapshot(path, repo_id, weights)
    return path


def _cached(huggingface_hub, repo_id: str, weights: bool) -> Optional[Path]:
    try:
        path = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=allow_patterns(None, weights),
                                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - "not cached" is an error of a version-dependent type
        return None
    return path if (path / "config.json").exists() else None


def _check_snapshot(path: Path, repo_id: str, weights: bool) -> None:
    if not (path / "config.json").exists():
        raise ModelError(f"the Hugging Face repository '{repo_id}' has no config.json; it is not a "
                         "transformers model enstack can load.")
    if weights and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelError(f"the Hugging Face repository '{repo_id}' has neither model.safetensors nor "
                         "pytorch_model.bin; enstack needs PyTorch weights.")


def _hub_errors():
    try:
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:  # huggingface_hub < 0.21 kept them in utils
        from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError  # type: ignore
    return RepositoryNotFoundError, GatedRepoError
