"""``enstack stack CONFIG...``: the EnStack experiment from a stacking config, printed as a table."""

from __future__ import annotations

import argparse


def _stack(args: argparse.Namespace) -> int:
    import enstack

    report = enstack.stack(args.config, overrides=args.set, progress=not args.no_progress)
    print(report.markdown())
    best = report.best_row
    print(f"best stack by {report.select_by}: {' + '.join(best['models'])} with {best['meta']}: accuracy "
          f"{100 * best['accuracy']:.2f}%, F1 (w) {100 * best['f1_weighted']:.2f}%"
          + (f", AUC (w) {100 * best['auc_weighted']:.2f}%" if best["auc_weighted"] is not None else ""))
    print(f"results, meta-models and plots in {report.output_dir} (results.md, results.csv, results.json, meta/, plots/)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("stack", help="EnStack: stack the base models' predictions with meta-classifiers "
                              "and print the results table (trains missing base models first)")
    p.add_argument("config", nargs="+", help="stacking YAML config file(s), composed left to right "
                   "(e.g. configs/demo-stack.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. stack.protocol=oof or stack.meta_classifiers=[lr,svm]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars while base models train")
    p.set_defaults(func=_stack)
