"""The package surface: import order and torch-version check, the exception
hierarchy across the C++/Python boundary, and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

import enstack
from enstack import _C


@pytest.mark.parametrize("kind", ["Error", "ConfigError", "DataError", "CheckpointError", "ModelError"])
def test_cpp_errors_arrive_as_enstack_exceptions_with_their_message(kind):
    message = f"{kind}: train.batch_size is 0; set it to a positive number"
    with pytest.raises(getattr(enstack, kind)) as info:
        _C._testing.throw_error(kind, message)
    assert str(info.value) == message
    assert isinstance(info.value, enstack.Error)
    assert type(info.value).__module__ == "enstack"


def test_subclasses_are_distinct():
    assert issubclass(enstack.ModelError, enstack.Error)
    assert not issubclass(enstack.ModelError, enstack.DataError)
    with pytest.raises(enstack.Error):
        _C._testing.throw_error("CheckpointError", "x")
    try:
        _C._testing.throw_error("DataError", "x")
    except enstack.ModelError:  # pragma: no cover - would be a wrong mapping
        pytest.fail("DataError was caught as ModelError")
    except enstack.DataError:
        pass


def test_torch_check_failures_are_runtime_errors_without_cpp_backtrace():
    with pytest.raises(RuntimeError, match="shape mismatch here") as info:
        _C._testing.throw_error("torch_check", "shape mismatch here")
    assert "frame #" not in str(info.value)
    assert not isinstance(info.value, enstack.Error)


def test_internal_errors_raise_instead_of_aborting():
    with pytest.raises(RuntimeError, match="enstack internal error"):
        _C._testing.throw_error("internal", "cursor 3")
    # The process is alive and the core still works.
    assert _C.util.build_info()["enstack_version"] == enstack.__version__


def test_torch_is_imported_before_the_core():
    code = "import sys, enstack; mods = list(sys.modules); print(mods.index('torch') < mods.index('enstack._C'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_different_torch_at_run_time_is_a_clear_import_error(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.13.1+cu117")
    with pytest.raises(ImportError, match=r"compiled against torch 2\.\d+.*--no-build-isolation"):
        enstack._check_torch_version()


def test_the_core_was_built_against_the_running_torch():
    assert _C.__torch_version__ == torch.__version__


def test_a_torch_of_the_same_version_but_another_build_is_refused(monkeypatch):
    other = "+cu130" if "+cpu" in torch.__version__ else "+cpu"
    monkeypatch.setattr(torch, "__version__", torch.__version__.split("+")[0] + other)
    with pytest.raises(ImportError, match=rf"compiled against torch {re.escape(_C.__torch_version__)} but torch "
                                          rf"{re.escape(torch.__version__)}.*--no-build-isolation"):
        enstack._check_torch_version()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "enstack.cli", *args], capture_output=True, text=True)


def test_doctor_reports_versions_threads_and_dependencies():
    out = _cli("doctor")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for needle in ["enstack", enstack.__version__, torch.__version__, "python", "C++ compiler",
                   "CUDA available", "intra-op threads", "C++ dep spdlog", "C++ dep nlohmann_json",
                   "C++ dep sentencepiece", "torch build", "cuDNN", "static 0.2.1"]:
        assert needle in text, f"{needle!r} missing from doctor output:\n{text}"


def test_cli_errors_are_one_line_on_stderr_without_traceback(tmp_path):
    out = _cli("model", "check", str(tmp_path / "absent"))
    assert out.returncode == 2
    assert out.stdout == ""
    assert "ModelError" in out.stderr and "does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    debug = _cli("--debug", "model", "check", str(tmp_path / "absent"))
    assert "Traceback" in debug.stderr


def test_type_stub_and_marker_are_shipped():
    from importlib import resources

    files = resources.files("enstack")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_C", "__init__.pyi").is_file()
    assert files.joinpath("_C", "model.pyi").is_file()


def test_all_exports_the_public_subpackages_by_one_rule():
    import pathlib

    package = pathlib.Path(enstack.__file__).parent
    subpackages = {p.name for p in package.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_")}
    assert subpackages - {"cli"} <= set(enstack.__all__)  # cli is the command, not an API
    assert {"colab", "hub", "model"} <= set(enstack.__all__)
    assert all(hasattr(enstack, name) for name in enstack.__all__)
    assert not [n for n in enstack.__all__ if n.startswith("_") and n != "__version__"]
