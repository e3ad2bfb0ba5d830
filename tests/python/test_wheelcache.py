"""The wheel cache a fresh Colab runtime installs from: its key (source, Python, the full
torch version with its local label, platform), hits and misses, the store that never
leaves half a wheel, and that the module loads from the source tree before enstack is
installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from enstack import wheelcache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source(tmp_path):
    tree = tmp_path / "src"
    (tree / "python" / "enstack").mkdir(parents=True)
    (tree / "cpp").mkdir()
    (tree / "pyproject.toml").write_text("[project]\nname = 'enstack'\n")
    (tree / "python" / "enstack" / "_version.py").write_text('__version__ = "9.8.7"\n')
    (tree / "cpp" / "core.cpp").write_text("int f() { return 1; }\n")
    return tree


def test_the_key_names_version_source_python_torch_build_and_platform(source):
    key = wheelcache.cache_key(source, torch_version="2.13.0+cu126")
    assert key.startswith("enstack-9.8.7-") and f"-cp{sys.version_info.major}{sys.version_info.minor}-" in key
    assert "-torch2.13.0_cu126-" in key
    assert key == wheelcache.cache_key(source, torch_version="2.13.0+cu126")
    assert key != wheelcache.cache_key(source, torch_version="2.13.0+cpu")  # another build of the same version
    assert key != wheelcache.cache_key(source, torch_version="2.14.0+cu126")
    (source / "python" / "enstack" / "__pycache__").mkdir()
    (source / "python" / "enstack" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert key == wheelcache.cache_key(source, torch_version="2.13.0+cu126")  # bytecode is not source
    (source / "cpp" / "core.cpp").write_text("int f() { return 2; }\n")
    assert key != wheelcache.cache_key(source, torch_version="2.13.0+cu126")


def test_a_cached_wheel_is_installed_without_building_and_another_torch_builds_anew(source, tmp_path):
    cache = tmp_path / "drive" / "wheels"
    builds, installs = [], []

    def build(src, out_dir):
        builds.append(src)
        wheel = out_dir / f"enstack-9.8.7-cp311-cp311-linux_x86_64-{len(builds)}.whl"
        wheel.write_bytes(b"wheel %d" % len(builds))
        return wheel

    first = wheelcache.install(source, cache, torch_version="2.13.0+cu126", build=build,
                               install_wheel=installs.append, say=lambda _: None)
    again = wheelcache.install(source, cache, torch_version="2.13.0+cu126", build=build,
                               install_wheel=installs.append, say=lambda _: None)
    assert len(builds) == 1 and first == again and installs == [first, first]
    assert first.parent == cache / wheelcache.cache_key(source, torch_version="2.13.0+cu126")
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging folder left
    other = wheelcache.install(source, cache, torch_version="2.13.0+cpu", build=build,
                               install_wheel=installs.append, say=lambda _: None)
    assert len(builds) == 2 and other.parent != first.parent and other.read_bytes() == b"wheel 2"


def test_a_failed_build_stores_nothing(source, tmp_path):
    cache = tmp_path / "wheels"

    def build(src, out_dir):
        raise subprocess.CalledProcessError(1, ["pip", "wheel"])

    with pytest.raises(subprocess.CalledProcessError):
        wheelcache.install(source, cache, torch_version="2.13.0+cpu", build=build, install_wheel=lambda w: None,
                           say=lambda _: None)
    assert not cache.exists() or not any(cache.iterdir())


def test_the_module_loads_from_the_source_tree_without_enstack_or_torch():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('wheelcache', {str(ROOT / 'python/enstack/wheelcache.py')!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert 'enstack' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            f"print(m.cache_key({str(ROOT)!r}, torch_version='2.13.0+cpu'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("enstack-")


def test_colab_install_is_the_wheel_cache():
    from enstack import colab

    assert colab.install is wheelcache.install
