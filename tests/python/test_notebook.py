"""The Colab notebook: clean as committed, and run headlessly by a real Jupyter kernel outside Colab.

The runs use the demo setup (three tiny models from scratch on synthetic functions), made small
through ENSTACK_NOTEBOOK_OVERRIDES, with a local folder standing in for the Drive mirror. They
check what the cells showed against what the runs wrote to disk.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "enstack_colab.ipynb"
MODELS = ("demo", "demo-sp2000", "demo-deep")
EXAMPLES = 400  # split 80/10/10: 320 train (20 steps of 16 in the one epoch), 40 validation, 40 test
META = ("lr", "svm", "rf", "xgboost")


def _generator():
    spec = importlib.util.spec_from_file_location("make_enstack_colab", ROOT / "notebooks" / "make_enstack_colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(runs: Path, drive: Path):
    """Executes the notebook as Jupyter opens it (working directory: its folder); a failing cell raises."""
    overrides = {
        "OUTPUT_DIR": str(runs), "MIRROR_DIR": str(drive), "DEMO_EXAMPLES": EXAMPLES, "EPOCHS": 1, "NUM_THREADS": 1,
        "OPEN_TENSORBOARD": False,
        "OVERRIDES": {"model.max_length": 128, "train.eval_steps": 8, "train.save_steps": 8, "train.logging_steps": 4},
    }
    mp = pytest.MonkeyPatch()
    mp.setenv("ENSTACK_NOTEBOOK_OVERRIDES", json.dumps(overrides))  # the kernel inherits this environment
    mp.setenv("OMP_NUM_THREADS", "1")
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        mp.undo()
    return nb


def _outputs(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id).outputs


def _text(outputs) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")


def _data(outputs, mime):
    return [o.data[mime] for o in outputs if o.output_type in ("display_data", "execute_result") and mime in o.data]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("notebook")
    return _run(tmp / "runs", tmp / "drive"), tmp / "runs", tmp / "drive"


def test_committed_notebook_is_the_generated_one_without_outputs():
    assert NOTEBOOK.read_text() == _generator().render(), "run notebooks/make_enstack_colab.py"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert [c.id for c in nb.cells if "parameters" in c.metadata.get("tags", [])] == ["parameters"]


@pytest.mark.slow
def test_every_cell_ran_without_errors_outside_colab(executed):
    nb, _, _ = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "not Colab: nothing to install" in _text(_outputs(nb, "install"))
    assert "Google Drive not mounted" in _text(_outputs(nb, "drive"))
    shown = {line.split()[0]: line for line in _text(_outputs(nb, "overrides")).splitlines()}
    for name in ("OUTPUT_DIR", "MIRROR_DIR", "DEMO_EXAMPLES", "EPOCHS", "NUM_THREADS", "OVERRIDES"):
        assert shown[name].endswith("(from ENSTACK_NOTEBOOK_OVERRIDES)"), shown[name]
    assert shown["DEMO_EXAMPLES"].split()[1] == str(EXAMPLES)
    assert shown["BASE_MODELS"] == "BASE_MODELS       ['demo', 'demo-sp2000', 'demo-deep']"


@pytest.mark.slow
def test_data_and_training_cells_show_what_the_runs_wrote(executed):
    nb, runs, drive = executed
    data_html = _data(_outputs(nb, "data"), "text/html")[0]
    train_html = _data(_outputs(nb, "train"), "text/html")[0]
    for name in MODELS:
        counts = {s: json.loads((runs / name / "data" / f"{s}.json").read_text())["count"]
                  for s in ("train", "validation", "test")}
        assert counts == {"train": 320, "validation": 40, "test": 40}
        assert f">{name}</th>" in data_html and f"<th>{name}</th>" in train_html
        assert str(runs / name / "checkpoints" / "best") in train_html
        assert (runs / "configs" / f"{name}.yaml").is_file()
        assert list((runs / name / "logs").rglob("events.out.tfevents.*")), name
        assert (runs / name / "metrics" / "training-curves.png").is_file()
        # every checkpoint mirrored to the stand-in for Drive, complete (manifest written last)
        assert json.loads((drive / name / "checkpoints" / "step-00000020" / "MANIFEST.json").read_text())["step"] == 20
        assert (drive / name / "checkpoints" / "best" / "MANIFEST.json").is_file()
    assert f"TensorBoard logs: {runs}/<model>/logs" in _text(_outputs(nb, "tensorboard"))


@pytest.mark.slow
def test_evaluation_and_results_table_agree_with_the_files(executed):
    nb, runs, _ = executed
    evaluation = json.loads((runs / "evaluation.json").read_text())
    assert sorted(evaluation) == sorted(MODELS)
    assert len(_data(_outputs(nb, "evaluate"), "image/png")) == len(MODELS)  # training curves

    results = json.loads((runs / "stack" / "results.json").read_text())
    rows = results["rows"]
    assert len(rows) == len(MODELS) + (2 ** len(MODELS) - 1) * len(META)
    for name in MODELS:
        base = next(r for r in rows if r["key"] == f"{name}:base")
        # the native evaluation, and scikit-learn on the stacking run's saved test predictions: same scores
        assert base["count"] == evaluation[name]["count"] == 40
        assert base["accuracy"] == pytest.approx(evaluation[name]["accuracy"], abs=1e-6)
        assert base["f1_weighted"] == pytest.approx(evaluation[name]["f1_weighted"], abs=1e-5)

    table = "".join(_data(_outputs(nb, "stack"), "text/markdown"))
    assert table == (runs / "stack" / "results.md").read_text()
    assert "| Base models | Meta-classifier | Accuracy |" in table
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == 1 + len(rows)
    best = next(r for r in rows if r["best"])
    assert best["key"] == results["best"]
    bold = [line for line in lines if line.startswith("| **")]
    assert len(bold) == 1
    assert bold[0].startswith(f"| **{' + '.join(best['models'])}** | **{best['meta']}** | "
                              f"**{100 * best['accuracy']:.2f}** |")
    assert (f"best stack by f1_weighted: {' + '.join(best['models'])} with {best['meta']}"
            in _text(_outputs(nb, "stack")))

    assert len(_data(_outputs(nb, "plots"), "image/png")) == 3
    for name in ("confusion-best.png", "roc-best.png", "roc-compare.png"):
        assert (runs / "stack" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    used = _data(_outputs(nb, "use"), "text/html")[0]
    assert "int copy_name(const char *src) {" in used and "<th>CWE-119</th>" in used


@pytest.mark.slow
def test_a_fresh_runtime_with_only_the_drive_mirror_runs_all_again(executed, tmp_path):
    """Colab after a disconnect: the local runs are gone, Drive holds the mirror; Run all again."""
    _, _, drive = executed
    shutil.copytree(drive, tmp_path / "drive")
    nb = _run(tmp_path / "runs", tmp_path / "drive")  # best/ comes back from the mirror with the resume
    train_html = _data(_outputs(nb, "train"), "text/html")[0]
    assert train_html.count("<td>True</td>") >= len(MODELS)  # resumed, nothing trained again
    for name in MODELS:
        steps = sorted(p.name for p in (tmp_path / "drive" / name / "checkpoints").glob("step-*"))
        assert steps[-1] == "step-00000020"
    assert (tmp_path / "runs" / "stack" / "results.md").is_file()
