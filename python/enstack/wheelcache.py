"""A cache of built enstack wheels (e.g. on Google Drive), one per source and torch build.

enstack's C++ core is compiled against the exact torch that imports it, so a fresh
Colab runtime would compile it again (minutes on 2 CPUs) before every resume. With a
cache, the first runtime builds a wheel once and stores it; every later runtime with
the same source, Python, torch build (``torch.__version__`` with its local label, e.g.
``2.13.0+cu126``) and platform installs that wheel in seconds.

This module uses the standard library only and imports nothing of enstack, so the
notebook's install cell can load it from the source tree before enstack is installed::

    spec = importlib.util.spec_from_file_location("wheelcache", f"{src}/python/enstack/wheelcache.py")
    wheelcache = importlib.util.module_from_spec(spec); spec.loader.exec_module(wheelcache)
    wheelcache.install(src, "/content/drive/MyDrive/enstack/wheels")

It is also ``enstack.colab.install``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["cache_key", "install", "source_hash"]

# What a build reads: a change in any of these is another wheel.
_SOURCE_PARTS = ("pyproject.toml", "CMakeLists.txt", "cmake", "cpp", "python")
_SKIPPED = re.compile(r"(^|/)(__pycache__|\.pytest_cache)(/|$)|\.pyc$")
_BUILD_TOOLS = ("scikit-build-core>=0.10", "cmake>=3.26", "ninja")


def source_hash(source: PathLike) -> str:
    """SHA-256 over the paths and bytes of the files a build reads, in a fixed order."""
    root = Path(source)
    digest = hashlib.sha256()
    for part in _SOURCE_PARTS:
        base = root / part
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(root).as_posix()
            if _SKIPPED.search(rel):
                continue
            digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version(source: Path) -> str:
    text = (source / "python" / "enstack" / "_version.py").read_text()
    found = re.search(r"__version__\s*=\s*[\"']([^\"']+)", text)
    if not found:
        raise ValueError(f"{source} has no python/enstack/_version.py with a __version__; is it an enstack source tree?")
    return found.group(1)


def _running_torch() -> str:
    import torch  # the torch the wheel must match, as enstack's import check compares it

    return torch.__version__


def cache_key(source: PathLike, torch_version: Optional[str] = None) -> str:
    """``enstack-<version>-<source hash>-<python tag>-torch<full torch version>-<platform>``."""
    source = Path(source)
    torch_version = torch_version or _running_torch()
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    safe = lambda text: re.sub(r"[^A-Za-z0-9.]+", "_", text)  # noqa: E731 - "+cu126" -> "_cu126"
    return (f"enstack-{_version(source)}-{source_hash(source)[:16]}-{python_tag}-torch{safe(torch_version)}-"
            f"{safe(sysconfig.get_platform())}")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _build(source: Path, out_dir: Path) -> Path:
    """Builds the wheel against the installed torch (no build isolation)."""
    _pip("install", "-q", *_BUILD_TOOLS)
    _pip("wheel", "--no-build-isolation", "--no-deps", "-w", str(out_dir), str(source))
    wheels = sorted(out_dir.glob("enstack-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"building {source} left {len(wheels)} enstack wheels in {out_dir}, expected one")
    return wheels[0]


def _install(wheel: Path) -> None:
    _pip("install", "-q", "--force-reinstall", "--no-deps", str(wheel))
    # Its other dependencies, when some are missing. The installed torch is pinned: the wheel was
    # built against it, and pip must not "upgrade" it to satisfy the torch>= requirement.
    with tempfile.TemporaryDirectory(prefix="enstack-pin-") as tmp:
        pin = Path(tmp) / "constraints.txt"
        pin.write_text(f"torch=={_running_torch()}\n")
        _pip("install", "-q", "-c", str(pin), str(wheel))


def install(source: PathLike, cache_dir: PathLike, *, torch_version: Optional[str] = None,
            build: Callable[[Path, Path], Path] = _build, install_wheel: Callable[[Path], None] = _install,
            say: Callable[[str], None] = print) -> Path:
    """Installs enstack from ``source`` through the wheel cache in ``cache_dir``; returns the wheel.

    A cached wheel for this source, Python, torch build and platform is installed as is;
    otherwise the wheel is built once, stored in the cache (a temporary folder renamed
    into place, so a runtime that disconnects mid-copy leaves no half wheel), and
    installed. ``build`` and ``install_wheel`` are for tests.
    """
    source = Path(source).resolve()
    if not (source / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{source} is not an enstack source tree (no pyproject.toml).")
    key = cache_key(source, torch_version)
    slot = Path(cache_dir) / key
    cached = sorted(slot.glob("enstack-*.whl")) if slot.is_dir() else []
    if cached:
        start = time.monotonic()
        install_wheel(cached[0])
        say(f"enstack: installed the cached wheel {cached[0].name} ({time.monotonic() - start:.1f} s; cache {slot})")
        return cached[0]
    say(f"enstack: no cached wheel for this source and torch {torch_version or _running_torch()} in {cache_dir}; "
        "compiling the C++ core once against the installed torch (about 6-11 minutes on 2 CPUs). "
        "Later runtimes with the same torch install the stored wheel in seconds.")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="enstack-wheel-") as tmp:
        built = build(source, Path(tmp))
        staging = slot.with_name(f".{key}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(built, staging / built.name)
        try:
            staging.rename(slot)
        except OSError:  # another runtime stored the same wheel meanwhile: keep that one
            shutil.rmtree(staging, ignore_errors=True)
    wheel = sorted(slot.glob("enstack-*.whl"))[0]
    say(f"enstack: built and stored {wheel.name} in {time.monotonic() - start:.0f} s")
    install_wheel(wheel)
    return wheel


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python python/enstack/wheelcache.py SOURCE_TREE CACHE_DIR``: the notebook's install step
    as a command (by path: ``python -m enstack.wheelcache`` would need enstack installed)."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python python/enstack/wheelcache.py SOURCE_TREE CACHE_DIR", file=sys.stderr)
        return 2
    install(args[0], args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
