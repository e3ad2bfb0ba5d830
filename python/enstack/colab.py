"""Google Colab and Drive helpers: detect Colab, mount Drive, refuse Drive paths that are not mounted.

A path under ``/content/drive`` while Drive is not mounted is a trap: writing there
creates ordinary directories on the runtime's local disk, which vanish with the
runtime, and the user believes the checkpoints are safe on Drive. ``check_drive_paths``
(called by ``Trainer`` and the CLI before anything is written) turns that into a
``ConfigError`` that says how to mount Drive.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Dict, List, Mapping, Optional

from enstack._C import ConfigError
from enstack.wheelcache import install

log = logging.getLogger("enstack")

__all__ = ["DRIVE_ROOT", "check_drive_paths", "drive_mounted", "in_colab", "install", "is_drive_path", "mount_drive"]

#: Where Colab mounts Google Drive.
DRIVE_ROOT = "/content/drive"

# Config keys that may hold a path on Drive.
_PATH_KEYS = ("run.output_dir", "run.mirror_dir", "data.train", "data.validation", "data.test",
              "model.name_or_path", "model.tokenizer.path")


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


def drive_mounted(root: Optional[str] = None) -> bool:
    """True when something is mounted at the Drive root (``/content/drive``).

    A mount point, not a directory: a ``MyDrive`` folder created by writing to an
    unmounted path must not count as Drive.
    """
    return os.path.ismount(root or DRIVE_ROOT)


def is_drive_path(path: Any, root: Optional[str] = None) -> bool:
    """True when ``path`` lies under the Drive root."""
    if path is None:
        return False
    root = os.path.normpath(root or DRIVE_ROOT)
    p = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(path))))
    return p == root or p.startswith(root + os.sep)


def mount_drive(mountpoint: Optional[str] = None, force_remount: bool = False) -> bool:
    """Mounts Google Drive in Colab (asks for authorisation there); elsewhere does nothing.

    Returns True when Drive is mounted afterwards, False outside Colab, so a notebook
    cell can call it unconditionally.
    """
    mountpoint = mountpoint or DRIVE_ROOT
    if not in_colab():
        log.info("not running in Colab: Google Drive is not mounted; use local paths")
        return False
    if drive_mounted(mountpoint) and not force_remount:
        return True
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(mountpoint, force_remount=force_remount)
    return drive_mounted(mountpoint)


def _value(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
        if node is None:
            return None
    return node


def check_drive_paths(cfg: Any, extra: Optional[Dict[str, Any]] = None) -> None:
    """Raises ``ConfigError`` naming every configured path on Drive while Drive is not mounted.

    ``cfg``: an ``enstack.Config`` (or a nested mapping); ``extra``: more name -> path
    pairs to check (e.g. a CLI ``--out``).
    """
    paths = {key: _value(cfg, key) for key in _PATH_KEYS}
    paths.update(extra or {})
    on_drive = [f"{key} = {value}" for key, value in paths.items()
                if isinstance(value, (str, os.PathLike)) and is_drive_path(value)]
    if not on_drive or drive_mounted():
        return
    raise ConfigError(_not_mounted_message(on_drive))


def _not_mounted_message(on_drive: List[str]) -> str:
    where = ("In Colab run `enstack.colab.mount_drive()` (or `from google.colab import drive; "
             f"drive.mount('{DRIVE_ROOT}')`) before training." if in_colab() else
             "This is not a Colab runtime: use local paths here (e.g. --set run.output_dir=runs/NAME), "
             "or run in Colab with Drive mounted.")
    return (f"Google Drive is not mounted (nothing is mounted at {DRIVE_ROOT}), but the config points there: "
            f"{'; '.join(on_drive)}. Files written there now would land on the runtime's local disk and be "
            f"lost when it disconnects. {where}")
