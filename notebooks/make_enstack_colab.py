"""Writes notebooks/enstack_colab.ipynb: the cells below, no outputs, stable cell ids.

    .venv/bin/python notebooks/make_enstack_colab.py          # rewrite the notebook
    .venv/bin/python notebooks/make_enstack_colab.py --check  # exit 1 when the notebook differs

Edit the cells here, not in Jupyter: tests/python/test_notebook.py checks that the
committed notebook is exactly what this script writes, and then executes it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

NOTEBOOK = Path(__file__).with_name("enstack_colab.ipynb")

CELLS = [
    ("intro", "markdown", """
# EnStack in Colab: three code models, one stacked ensemble

This notebook fine-tunes three base models to classify C functions by vulnerability class
(CWE-119, CWE-120, CWE-469, CWE-476, other) and stacks their predictions with meta-classifiers
(EnStack, Ridoy et al. 2024): mount Drive, install enstack, choose the models and a VRAM preset,
prepare the data, train with checkpoints mirrored to Drive, watch TensorBoard, evaluate, stack.

- **In Colab**: for CodeBERT, GraphCodeBERT and UniXcoder pick a GPU (*Runtime > Change runtime
  type*), set the parameters below, then *Runtime > Run all*.
- **Disconnected or interrupted?** Reconnect and *Run all* again. Each model resumes exactly where
  its newest valid checkpoint (on the runtime's disk or on Drive) left it; a finished model is
  not trained again, and its predictions are reused. *Interrupt* (Ctrl-C) during training writes
  a recovery checkpoint first.
- **Outside Colab** every cell runs as it is on the demo setup (three tiny models trained from
  scratch on enstack's embedded synthetic functions, on the CPU, in minutes): Drive and the
  installation are skipped, and enstack must already be importable (`make setup` in the
  repository).
"""),
    ("environment", "code", """
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path


def running_in_colab() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all
        return False


IN_COLAB = running_in_colab()
print(f"Python {sys.version.split()[0]}: " + ("a Colab runtime" if IN_COLAB else
      "not a Colab runtime, so Drive and the installation are skipped"))
"""),
    ("parameters-intro", "markdown", """
## Parameters

Base models are names of configs in the repository's `configs/` folder, or paths of training
config files (YAML):

| name | what |
| --- | --- |
| `demo`, `demo-sp2000`, `demo-deep` | tiny RoBERTas trained from scratch, each differently (`configs/demo*.yaml`); minutes on a CPU |
| `codebert`, `graphcodebert`, `unixcoder` | the paper's models from the Hugging Face Hub: `configs/defaults.yaml` (the paper's fine-tuning setup) + `configs/models/<name>.yaml` + the VRAM preset; use a GPU |

VRAM presets (for the Hub models): `vram-4gb` (batch 6 x 2 accumulation), `vram-6gb`, `vram-8gb`
(T4), `vram-16gb` (L4, A100), `safe` (for when the others run out of memory). Data: `demo` (the
embedded synthetic functions, split 80/10/10) or `vdisc` (Draper VDISC as distributed:
`VDISC_train.hdf5`, `VDISC_validate.hdf5`, `VDISC_test.hdf5` in `VDISC_DIR`, e.g. on Drive).

Runs go to `OUTPUT_DIR/<model>` (in Colab the runtime's fast local disk) and every checkpoint is
copied and verified in the background to `MIRROR_DIR/<model>` (Drive): after a disconnect training
resumes from the newest valid checkpoint of the two. Scripted runs (the enstack tests) override
these values with JSON in the environment variable `ENSTACK_NOTEBOOK_OVERRIDES`; the cell after
this one applies it and prints the values in use.
"""),
    ("parameters", "code", """
# Where enstack's source comes from in Colab: a git URL (cloned to /content/enstack) or a folder
# holding the source tree (a clone or an unpacked archive, e.g. on Drive). Unused outside Colab.
ENSTACK_SOURCE = "/content/drive/MyDrive/enstack/source"
# Built wheels, one per source and torch build: a fresh runtime installs in seconds instead of
# compiling the C++ core (minutes). None: build every time. Unused outside Colab.
WHEEL_CACHE = "/content/drive/MyDrive/enstack/wheels"

BASE_MODELS = ["demo", "demo-sp2000", "demo-deep"]  # or ["codebert", "graphcodebert", "unixcoder"]
VRAM_PRESET = "vram-8gb"     # Hub models only: vram-4gb, vram-6gb, vram-8gb, vram-16gb, safe, or None
DATA = "demo"                # "demo" or "vdisc"
VDISC_DIR = "/content/drive/MyDrive/enstack/data"
DEMO_EXAMPLES = None         # DATA "demo": None for the embedded set (3,000 functions), or a number to generate
EPOCHS = None                # None: each config's own (demo 2, the paper's setup 10)
OVERRIDES = {}               # dotted config overrides for every base model, e.g. {"train.batch_size": 8}
NUM_THREADS = 0              # CPU threads for training, tokenizing and the meta-classifiers; 0: all cores

# Relative paths are taken from the source tree's root (the folder holding configs/).
OUTPUT_DIR = "/content/enstack-runs" if IN_COLAB else "runs/notebook"
MIRROR_DIR = "/content/drive/MyDrive/enstack/runs" if IN_COLAB else None  # None: no mirror

META_CLASSIFIERS = ["lr", "svm", "rf", "xgboost"]  # the paper's four
STACK_PROTOCOL = "paper"     # "paper": meta-classifiers learn from validation predictions, scored on test;
                             # "oof": out-of-fold over train+validation (fine-tunes each model STACK_FOLDS times)
STACK_FOLDS = 5
OPEN_TENSORBOARD = IN_COLAB  # show TensorBoard in the notebook (else its log directory is printed)
"""),
    ("overrides", "code", """
PARAMETERS = ("ENSTACK_SOURCE", "WHEEL_CACHE", "BASE_MODELS", "VRAM_PRESET", "DATA", "VDISC_DIR", "DEMO_EXAMPLES", "EPOCHS",
              "OVERRIDES", "NUM_THREADS", "OUTPUT_DIR", "MIRROR_DIR", "META_CLASSIFIERS", "STACK_PROTOCOL",
              "STACK_FOLDS", "OPEN_TENSORBOARD")
given = json.loads(os.environ.get("ENSTACK_NOTEBOOK_OVERRIDES") or "{}")
unknown = sorted(set(given) - set(PARAMETERS))
if unknown:
    raise ValueError(f"ENSTACK_NOTEBOOK_OVERRIDES sets unknown parameters {unknown}; "
                     f"the parameters are {', '.join(PARAMETERS)}.")
globals().update(given)
for name in PARAMETERS:
    print(f"{name:<17} {globals()[name]!r}" + ("   (from ENSTACK_NOTEBOOK_OVERRIDES)" if name in given else ""))
"""),
    ("install-intro", "markdown", """
## Install enstack (Colab only)

enstack's C++ core is compiled against the torch that is installed (Colab's own). The first
runtime compiles it once (minutes) and stores the wheel in `WHEEL_CACHE` on Drive, keyed by the
source, Python, the full torch version (`2.13.0+cu126`: a CUDA and a CPU build differ) and the
platform; every later runtime with the same torch installs that wheel in seconds. A restarted
runtime that still has enstack skips this. Outside Colab nothing is installed.
"""),
    ("install", "code", """
SOURCE_TREE = None  # the enstack source tree; its configs/ folder holds the training configs
if IN_COLAB:
    if "://" in ENSTACK_SOURCE or ENSTACK_SOURCE.startswith("git@"):
        SOURCE_TREE = Path("/content/enstack")
        if not (SOURCE_TREE / "pyproject.toml").is_file():
            !git clone --depth 1 {ENSTACK_SOURCE} {SOURCE_TREE}
    else:
        SOURCE_TREE = Path(ENSTACK_SOURCE)
        if SOURCE_TREE.as_posix().startswith("/content/drive/"):
            from google.colab import drive
            drive.mount("/content/drive")
        if not (SOURCE_TREE / "pyproject.toml").is_file():
            raise FileNotFoundError(f"ENSTACK_SOURCE: {SOURCE_TREE} holds no enstack source tree (no pyproject.toml). "
                                    "Set it to a git URL or to the folder you copied the source to.")
    if importlib.util.find_spec("enstack") is None:
        # The wheel cache module runs before enstack is installed: loaded from the source tree.
        spec = importlib.util.spec_from_file_location("wheelcache", SOURCE_TREE / "python/enstack/wheelcache.py")
        wheelcache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(wheelcache)
        if WHEEL_CACHE and WHEEL_CACHE.startswith("/content/drive/"):
            from google.colab import drive
            drive.mount("/content/drive")
        wheelcache.install(SOURCE_TREE, WHEEL_CACHE or tempfile.mkdtemp(prefix="enstack-wheels-"))
        importlib.invalidate_caches()  # so that the next cell finds the package just installed
    else:
        print("enstack is installed already")
else:
    print("not Colab: nothing to install; using the enstack this kernel imports")
"""),
    ("drive-intro", "markdown", """
## Google Drive

`enstack.colab.mount_drive()` mounts Drive in Colab (it asks for access once) and does nothing
elsewhere. Training refuses a path under `/content/drive` while Drive is not mounted: files
written there would land on the runtime's disk and vanish with it.
"""),
    ("drive", "code", """
import enstack

DRIVE_MOUNTED = enstack.colab.mount_drive()
print(f"enstack {enstack.__version__} ({Path(enstack.__file__).parent}); Google Drive "
      + (f"mounted at {enstack.colab.DRIVE_ROOT}" if DRIVE_MOUNTED else "not mounted"))
"""),
    ("configs-intro", "markdown", """
## The base models' configurations

Each base model's configuration is composed from its config files and the parameters, validated,
and written to `OUTPUT_DIR/configs/<model>.yaml`; training and stacking both read that file
(`enstack train OUTPUT_DIR/configs/<model>.yaml` continues the same run from a terminal).
"""),
    ("configs", "code", """
import pandas as pd
import yaml
from IPython.display import Image, Markdown, display

from enstack.data import synthetic

pd.set_option("display.max_colwidth", None)  # whole paths in tables
HUB_MODELS = {"codebert": "CodeBERT", "graphcodebert": "GraphCodeBERT", "unixcoder": "UniXcoder"}


def find_source_tree() -> Path:
    here = Path.cwd().resolve()
    candidates = ([SOURCE_TREE] if SOURCE_TREE else []) + [here, *here.parents]
    candidates += list(Path(enstack.__file__).resolve().parents)  # an editable install lives in its source tree
    for folder in candidates:
        if (folder / "configs" / "demo.yaml").is_file():
            return folder
    raise FileNotFoundError("enstack's configs/ folder was not found (looked in the working directory, its parents "
                            "and beside the enstack package); set ENSTACK_SOURCE to enstack's source tree.")


def under(root: Path, path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def config_files(model: str) -> list:
    if model in HUB_MODELS:
        files = [CONFIG_DIR / "defaults.yaml", CONFIG_DIR / "models" / f"{model}.yaml"]
        return files + ([CONFIG_DIR / f"{VRAM_PRESET}.yaml"] if VRAM_PRESET else [])
    path = under(REPO, model) if model.endswith((".yaml", ".yml")) else CONFIG_DIR / f"{model}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"base model {model!r}: there is no config {path}; use one of "
                                f"{', '.join(sorted(p.stem for p in CONFIG_DIR.glob('demo*.yaml')))}, "
                                f"{', '.join(HUB_MODELS)} or the path of a training config file.")
    return [path]


def data_overrides() -> dict:
    if DATA == "vdisc":
        folder = Path(VDISC_DIR).expanduser()
        return {"data.format": "vdisc_hdf5", "data.split": None, "data.train": str(folder / "VDISC_train.hdf5"),
                "data.validation": str(folder / "VDISC_validate.hdf5"), "data.test": str(folder / "VDISC_test.hdf5")}
    if DATA != "demo":
        raise ValueError(f"DATA must be 'demo' or 'vdisc', not {DATA!r}.")
    split = {"data.validation": None, "data.test": None, "data.split": [0.8, 0.1, 0.1]}
    if DEMO_EXAMPLES is None:
        return {"data.train": "demo", **split}  # enstack's embedded set, generated in each run's data/
    path = RUNS / "demo-data" / f"synthetic-{int(DEMO_EXAMPLES)}.jsonl"
    if not path.is_file():  # deterministic: the same functions every time
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic.write_jsonl(path.with_suffix(".tmp"), int(DEMO_EXAMPLES), seed=42)
        path.with_suffix(".tmp").replace(path)
    return {"data.train": str(path), "data.format": "jsonl", "data.text_column": "func",
            "data.label_columns": ["label"], "data.label_policy": "class", "data.id_column": "id", **split}


REPO = find_source_tree()
CONFIG_DIR = REPO / "configs"
RUNS = under(REPO, OUTPUT_DIR)
MIRROR = under(REPO, MIRROR_DIR) if MIRROR_DIR else None
(RUNS / "configs").mkdir(parents=True, exist_ok=True)

configs, config_paths, rows = {}, {}, []
for model in BASE_MODELS:
    name = HUB_MODELS.get(model, Path(model).stem)
    overrides = {"run.name": name, "run.output_dir": str(RUNS / name),
                 "run.mirror_dir": str(MIRROR / name) if MIRROR else None,
                 "run.num_threads": NUM_THREADS, "data.num_workers": NUM_THREADS, **data_overrides()}
    if EPOCHS is not None:
        overrides["train.epochs"] = EPOCHS
    overrides.update(OVERRIDES)
    composed = enstack.load_config([str(f) for f in config_files(model)], overrides=overrides)
    config_paths[name] = RUNS / "configs" / f"{name}.yaml"
    config_paths[name].write_text(composed.to_yaml())
    configs[name] = cfg = enstack.load_config(config_paths[name])
    t = cfg.train
    rows.append({"model": name, "from": " + ".join(f.name for f in config_files(model)),
                 "weights": Path(cfg.model.name_or_path).name if cfg.model.from_scratch else cfg.model.name_or_path,
                 "device": cfg.run.device, "precision": t.precision, "batch": f"{t.batch_size} x {t.grad_accum}",
                 "epochs": t.epochs, "learning rate": t.learning_rate, "max length": cfg.model.max_length,
                 "run": cfg.run.output_dir, "mirror": cfg.run.mirror_dir or "none"})
display(pd.DataFrame(rows).set_index("model"))
"""),
    ("data-intro", "markdown", """
## Prepare the data

Ingest, split, tokenize and store every split of every base model (a token store per split in
`<run>/data/`). A store whose source, tokenizer and maximum length are unchanged is reused, so
this is quick the second time; training would do it too, this shows what it holds.
"""),
    ("data", "code", """
from enstack.data import prepare as data_prepare
from enstack.data import store as data_store

rows = []
for name, cfg in configs.items():
    for split, prepared in data_prepare.prepare(cfg).items():
        s = data_store.stats(prepared.open(), batch_size=cfg.train.batch_size, label_names=prepared.label_names)
        rows.append({"model": name, "split": split, "functions": s["count"],
                     "store": "reused" if prepared.reused else "built",
                     "tokens p50": round(s["length_percentiles"]["50"]), "p90": round(s["length_percentiles"]["90"]),
                     "truncated %": round(100 * s["share_truncated"], 1), **s["labels"]})
display(pd.DataFrame(rows).set_index(["model", "split"]))
"""),
    ("tensorboard-intro", "markdown", """
## TensorBoard

Loss, learning rate, gradient norm, throughput and memory while training; every evaluation's
metrics, per-class scores and confusion matrices. One run per base model. In Colab it refreshes
while the next cell trains.
"""),
    ("tensorboard", "code", """
if OPEN_TENSORBOARD and importlib.util.find_spec("tensorboard") is not None:
    %load_ext tensorboard
    %tensorboard --logdir {RUNS}
else:
    print(f"TensorBoard logs: {RUNS}/<model>/logs; watch them with `tensorboard --logdir {RUNS}`")
"""),
    ("train-intro", "markdown", """
## Train the base models

`enstack.Trainer(cfg).fit(resume=True)` for each: it continues from the newest valid checkpoint
(on the runtime's disk or in the mirror), or starts, or finds the run finished and does nothing.
Each run also writes TensorBoard events, `metrics/` (every evaluation as JSON, the training log,
plots) and `checkpoints/` (`best/` by weighted F1 on the validation split).
"""),
    ("train", "code", """
results, rows = {}, []
for name, cfg in configs.items():
    print(f"{name}: {cfg.run.output_dir}" + (f", mirrored to {cfg.run.mirror_dir}" if cfg.run.mirror_dir else ""))
    result = results[name] = enstack.Trainer(cfg).fit(resume=True)
    best = result.best_eval or {}
    rows.append({"model": name, "steps": result.global_step, "epochs": result.epochs_completed,
                 "resumed": result.resumed, "early stopped": result.early_stopped,
                 f"best {cfg.train.metric_for_best}": result.best_metric, "at step": best.get("step"),
                 "best accuracy": best.get("accuracy"), "save errors": result.save_errors, "best": result.best_dir})
display(pd.DataFrame(rows).set_index("model"))
"""),
    ("evaluate-intro", "markdown", """
## Evaluate

Each base model's best checkpoint on the test split (the stacking below scores on the same
functions), and its training curves. The metrics are also written to `OUTPUT_DIR/evaluation.json`.
"""),
    ("evaluate", "code", """
COLUMNS = ["count", "loss", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro",
           "auc_weighted", "mcc"]
evaluation = {name: enstack.Trainer(cfg, checkpoint="best").evaluate("test") for name, cfg in configs.items()}
(RUNS / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
display(pd.DataFrame.from_dict({name: {k: m.get(k) for k in COLUMNS} for name, m in evaluation.items()},
                               orient="index").round(4))
for name, cfg in configs.items():
    curves = Path(cfg.run.output_dir) / "metrics" / "training-curves.png"
    if curves.is_file():
        print(f"{name}: {curves}")
        display(Image(filename=str(curves)))
"""),
    ("stack-intro", "markdown", """
## Stack: the EnStack ensemble

Every base model alone, and every subset of them stacked by every meta-classifier, scored on
the test split; the best stack by weighted F1 is in bold. The stacking config is written to
`OUTPUT_DIR/stack.yaml` (`enstack stack OUTPUT_DIR/stack.yaml` does the same from a terminal);
results, saved meta-models and plots go to `OUTPUT_DIR/stack/`.
"""),
    ("stack", "code", """
stack_config = {
    "run": {"name": "stack", "output_dir": str(RUNS / "stack"), "seed": 42, "num_threads": NUM_THREADS},
    "stack": {"base_models": {name: str(path) for name, path in config_paths.items()},
              "meta_classifiers": list(META_CLASSIFIERS), "protocol": STACK_PROTOCOL, "folds": STACK_FOLDS,
              "train_base_models": False},  # they were trained above (oof fine-tunes its own fold models)
}
STACK_CONFIG = RUNS / "stack.yaml"
STACK_CONFIG.write_text(yaml.safe_dump(stack_config, sort_keys=False))
report = enstack.stack(STACK_CONFIG)
best = report.best_row
display(Markdown(report.markdown()))
print(f"best stack by {report.select_by}: {' + '.join(best['models'])} with {best['meta']}: "
      f"accuracy {100 * best['accuracy']:.2f}%, F1 (weighted) {100 * best['f1_weighted']:.2f}%")
ranked = pd.read_csv(report.files["results.csv"]).sort_values(report.select_by, ascending=False)
ranked["meta"] = ranked["meta"].fillna("none (alone)")
display(ranked[["models", "meta", "accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro",
                "auc_weighted"]].head(10).round(4))  # the ten best rows
"""),
    ("plots", "code", """
plots = Path(report.output_dir) / "plots"
for png in ("confusion-best.png", "roc-best.png", "roc-compare.png"):
    print(plots / png)
    display(Image(filename=str(plots / png)))
print("more:", ", ".join(sorted(p.name for p in plots.glob("*.png"))))
"""),
    ("use-intro", "markdown", """
## Use the ensemble on new functions

The base models of the best stack give class probabilities for new source code
(`Trainer.predict_texts`), and its saved meta-model combines them. The classes are those of
vulnerable functions (the paper's setup has no "not vulnerable" class), so each function gets
the class it resembles most.
"""),
    ("use", "code", """
functions = [
    "int copy_name(const char *src) {\\n    char name[16];\\n    strcpy(name, src);\\n    return name[0];\\n}",
    "void log_message(const char *msg) {\\n    printf(msg);\\n}",
]
meta = enstack.stacking.load_meta_model(Path(report.output_dir) / "meta" / "+".join(best["models"]) / best["meta"])
outputs = {m: {"probabilities": enstack.Trainer(configs[m], checkpoint="best").predict_texts(functions).float().numpy()}
           for m in meta.models}
probabilities = meta.predict_proba(meta.build_features(outputs))
display(pd.DataFrame(probabilities, columns=meta.label_names, index=[f.splitlines()[0] for f in functions]).round(3))
"""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "colab": {"name": "enstack_colab.ipynb", "provenance": []},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell_id, kind, source in CELLS:
        text = dedent(source).strip("\n")
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        cell.id = cell_id
        if cell_id == "parameters":
            cell.metadata["tags"] = ["parameters"]  # papermill's convention
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list) -> int:
    text = render()
    if "--check" in argv:
        same = NOTEBOOK.is_file() and NOTEBOOK.read_text() == text
        print(f"{NOTEBOOK} is {'up to date' if same else 'out of date: run notebooks/make_enstack_colab.py'}")
        return 0 if same else 1
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
