"""``enstack eval``, ``enstack predict`` and ``enstack bench``: using a trained run, and the benchmarks.

``register(subparsers)`` adds the three commands to the ``enstack`` parser (``enstack.cli``).
eval and predict load a checkpoint of the run a config describes (``best`` by default,
``last``, ``swa`` or a directory) and use the run's prepared token stores, so the
numbers are those of the data the model was trained and evaluated on.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

_CHECKPOINT_HELP = "best (default), final (the newest full checkpoint; also: last), swa, or a checkpoint directory"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="+", help="YAML config file(s) of the run, composed left to right")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. run.device=cpu")
    p.add_argument("--checkpoint", default="best", help=_CHECKPOINT_HELP)
    p.add_argument("--allow-changes", action="store_true",
                   help="use the config's data even though it differs from the data the run was prepared with "
                   "(tokenized with the run's own tokenizer)")


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="evaluate a checkpoint of a run on a split",
                               description="Metrics (accuracy, precision/recall/F1, AUC, confusion matrix) of a "
                               "checkpoint of the run CONFIG describes, on one of its splits.")
    _add_config_args(ev)
    ev.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("--plots", action="store_true",
                    help="also write confusion matrices and ROC curves to <output_dir>/metrics")
    ev.set_defaults(func=_eval)

    pr = subparsers.add_parser("predict", help="class probabilities of a split, or of new functions",
                               description="Writes class probabilities [N, C] of a split of the run (in the split's "
                               "order), or of the functions in --input, tokenized as the run's data. "
                               "--out FILE.npy holds the float32 matrix; FILE.jsonl one object per function "
                               "(id, predicted label, probabilities by class).")
    _add_config_args(pr)
    source = pr.add_mutually_exclusive_group()
    source.add_argument("--split", default=None, choices=["train", "validation", "test"],
                        help="a split of the run's data (default: test)")
    source.add_argument("--input", default=None, metavar="FILE.jsonl",
                        help="new functions: JSON lines, each an object with the source code in --text-field "
                        "(and optionally an id), or a JSON string")
    pr.add_argument("--text-field", default=None,
                    help="field of --input holding the code; default: data.text_column, func, code or functionSource")
    pr.add_argument("--out", required=True, metavar="FILE", help="output file: .npy or .jsonl")
    pr.set_defaults(func=_predict)

    be = subparsers.add_parser("bench", help="list the benchmarks, or run one by name",
                               description="Without NAME lists the scripts in benchmarks/; with NAME runs "
                               "benchmarks/NAME.py with the remaining arguments (try `enstack bench NAME --help`).")
    be.add_argument("name", nargs="?", help="benchmark name (file name without .py)")
    be.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    be.set_defaults(func=_bench)


# ------------------------------------------------------------------ eval


def _trainer(args: argparse.Namespace):
    import enstack

    cfg = enstack.load_config(args.config, overrides=args.set)
    trainer = enstack.Trainer(cfg, checkpoint=args.checkpoint, allow_changes=args.allow_changes)
    trainer.checkpoint_dir(args.checkpoint)  # a missing checkpoint fails before the data is read
    return cfg, trainer


def _eval(args: argparse.Namespace) -> int:
    cfg, trainer = _trainer(args)
    metrics = trainer.evaluate(args.split)
    checkpoint = trainer.checkpoint_dir(args.checkpoint)
    if args.plots:
        _eval_plots(cfg, trainer, args.split, Path(checkpoint).name)
    if args.json:
        print(json.dumps({"checkpoint": checkpoint, "split": args.split, **metrics}, indent=2))
        return 0
    print(format_metrics(metrics, f"{args.split} split, checkpoint {checkpoint}"))
    return 0


def _eval_plots(cfg, trainer, split: str, tag: str) -> None:
    from enstack.monitor import plots

    probs = trainer.predict(split).float().numpy()
    labels = trainer.prepare().splits[split].open().all_labels().reshape(-1).numpy()
    out = Path(cfg.run.output_dir) / "metrics"
    names = trainer.label_names()
    n = probs.shape[1]
    import numpy as np

    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (labels, probs.argmax(1)), 1)
    title = f"{split}, {tag}"
    for path in (plots.plot_confusion(counts, names, out / f"{split}-{tag}-confusion.png", title=title),
                 plots.plot_confusion(counts, names, out / f"{split}-{tag}-confusion-percent.png", percent=True,
                                      title=title),
                 plots.plot_roc(probs, labels, names, out / f"{split}-{tag}-roc.png", title=title)):
        print(f"wrote {path}", file=sys.stderr)


def format_metrics(m: Dict[str, Any], title: str) -> str:
    """A metrics dict (``Trainer.evaluate``) as a short human-readable table."""
    def num(v: Optional[float]) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [title, f"  functions     {m.get('count', 'n/a')}", f"  loss          {num(m.get('loss'))}",
             f"  accuracy      {num(m.get('accuracy'))}",
             f"  f1            weighted {num(m.get('f1_weighted'))}  macro {num(m.get('f1_macro'))}",
             f"  precision     weighted {num(m.get('precision_weighted'))}  macro {num(m.get('precision_macro'))}",
             f"  recall        weighted {num(m.get('recall_weighted'))}  macro {num(m.get('recall_macro'))}",
             f"  auc           weighted {num(m.get('auc_weighted'))}  macro {num(m.get('auc_macro'))}",
             f"  mcc           {num(m.get('mcc'))}"]
    rows = m.get("per_class") or []
    if rows:
        width = max(len(r["label"]) for r in rows)
        lines.append(f"  {'class':<{width}}  precision  recall     f1     auc  support")
        for r in rows:
            lines.append(f"  {r['label']:<{width}}  {num(r['precision']):>9}  {num(r['recall']):>6}  "
                         f"{num(r['f1']):>6}  {num(r.get('auc')):>6}  {r['support']:>7}")
    confusion = m.get("confusion")
    if confusion:
        labels = [r["label"] for r in rows] or [str(i) for i in range(len(confusion))]
        width = max(8, max(len(x) for x in labels))
        lines.append("  confusion (rows: true, columns: predicted)")
        lines.append("  " + " " * width + "".join(f"{x[:width]:>{width + 1}}" for x in labels))
        for name, row in zip(labels, confusion):
            lines.append(f"  {name:<{width}}" + "".join(f"{v:>{width + 1}}" for v in row))
    return "\n".join(lines)


# ------------------------------------------------------------------ predict


def _predict(args: argparse.Namespace) -> int:
    from enstack import DataError, colab

    out = Path(args.out)
    if out.suffix not in (".npy", ".jsonl"):
        raise DataError(f"--out '{out}' must end in .npy (the probability matrix) or .jsonl (one object per "
                        "function).")
    if args.input and Path(args.input).resolve() == out.resolve():
        raise DataError(f"--out '{out}' is the --input file: writing the predictions would replace the functions "
                        "they are made from. Give another --out file.")
    cfg, trainer = _trainer(args)
    colab.check_drive_paths(cfg, {"--out": str(out), "--input": args.input})
    if args.input:
        ids, texts = read_functions(Path(args.input), args.text_field, cfg.data.text_column)
        probs, labels = trainer.predict_texts(texts), None
        what = f"{len(texts):,} functions of {args.input}"
    else:
        split = args.split or "test"
        probs = trainer.predict(split)
        prepared = trainer.prepare().splits[split]
        true = prepared.open().all_labels()
        ids, labels = prepared.ids, true.tolist() if true.dim() == 1 else None  # multilabel: no single class
        what = f"the {split} split ({len(ids):,} functions)"
    probs = probs.float().numpy()
    _write_predictions(out, probs, ids, trainer.label_names(), labels)
    print(f"wrote probabilities [{probs.shape[0]}, {probs.shape[1]}] of {what} "
          f"(checkpoint {trainer.checkpoint_dir(args.checkpoint)}) to {out}")
    return 0


def read_functions(path: Path, text_field: Optional[str], text_column: Optional[str]):
    """(ids, texts) of a JSON-lines file of functions: objects with a code field, or plain strings."""
    from enstack import DataError
    from enstack.data.formats import repair_text

    if not path.exists():
        raise DataError(f"--input '{path}' does not exist.")
    ids: List[str] = []
    texts: List[str] = []
    replaced: List[int] = []  # line numbers of functions with invalid UTF-8
    candidates = [text_field] if text_field else [c for c in (text_column, "func", "code", "functionSource") if c]
    # Invalid UTF-8 is treated as in training data (enstack.data.formats.repair_text): each bad byte
    # becomes U+FFFD and the lines are reported, rather than the whole file failing to decode.
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number} is not JSON ({e.msg}); --input takes one JSON object or "
                                "string per line.") from None
            if isinstance(row, str):
                ids.append(str(number - 1))
                text = row
            else:
                field = next((c for c in candidates if isinstance(row, dict) and isinstance(row.get(c), str)), None)
                if field is None:
                    raise DataError(f"{path}:{number} has no string field {' / '.join(candidates)}; name the "
                                    "field holding the code with --text-field.")
                ids.append(str(row.get("id", number - 1)))
                text = row[field]
            text, bad = repair_text(text)
            texts.append(text)
            if bad:
                replaced.append(number)
    if not texts:
        raise DataError(f"--input '{path}' holds no functions.")
    if replaced:
        logging.getLogger("enstack").warning(
            "%s: invalid UTF-8 replaced by U+FFFD in %d functions (lines %s%s)", path, len(replaced),
            ", ".join(map(str, replaced[:5])), ", ..." if len(replaced) > 5 else "")
    return ids, texts


def _write_predictions(out: Path, probs, ids: List[str], names: List[str], labels: Optional[List[int]]) -> None:
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, probs.astype(np.float32))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, row in enumerate(probs):
                record = {"id": ids[i], "label": names[int(row.argmax())],
                          "probabilities": {n: float(p) for n, p in zip(names, row)}}
                if labels is not None:
                    record["true_label"] = names[int(labels[i])]
                f.write(json.dumps(record) + "\n")
    os.replace(tmp, out)


# ------------------------------------------------------------------ bench


def benchmarks_dir() -> Optional[Path]:
    """benchmarks/ of the source tree enstack runs from (editable install), or of the current directory."""
    import enstack

    for candidate in (Path(enstack.__file__).resolve().parents[2] / "benchmarks", Path.cwd() / "benchmarks"):
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    return None


def _bench(args: argparse.Namespace) -> int:
    from enstack import ConfigError

    directory = benchmarks_dir()
    if directory is None:
        raise ConfigError("no benchmarks/ directory found: the benchmarks ship with the source tree, not the "
                          "wheel. Run `enstack bench` in a clone of the repository.")
    scripts = {p.stem: p for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")}
    if not args.name:
        width = max(len(n) for n in scripts)
        for name, path in scripts.items():
            print(f"{name:<{width}}  {_summary(path)}")
        print(f"\nrun one with `enstack bench NAME [ARGS]` (scripts in {directory})")
        return 0
    if args.name not in scripts:
        raise ConfigError(f"no benchmark '{args.name}'; there are: {', '.join(scripts)}.")
    return subprocess.call([sys.executable, str(scripts[args.name]), *args.args])


def _summary(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())  # the first paragraph, on one line
