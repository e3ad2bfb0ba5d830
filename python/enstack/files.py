"""Small files that are never seen half written, and a record to check a file against later.

Checkpoints have their own writer in the core (``enstack._C.ckpt``); this is for the other
files enstack writes from Python (prediction arrays, generated data and their records): a
kill or a full disk mid-write must leave the old file or none, never a truncated one that a
later run takes for whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable, Tuple, Union

__all__ = ["atomic_write", "count_and_hash"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Calls ``write(f)`` on a temporary sibling, fsyncs it and renames it over ``path``.

    ``f`` is opened "w+b": writers such as h5py read back what they wrote."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing for a later run to trip over
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory is synced; some file systems (FUSE mounts
    # such as Drive) cannot open a directory for that, and the rename is still atomic there.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def count_and_hash(path: PathLike) -> Tuple[int, str]:
    """(number of newline-terminated lines, sha256 hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    lines = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            lines += block.count(b"\n")
    return lines, h.hexdigest()
