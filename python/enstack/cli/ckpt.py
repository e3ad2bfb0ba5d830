"""The ``enstack ckpt`` subcommands: list, inspect, verify, export and import of checkpoints.

``enstack.cli._build_parser`` calls ``register(subparsers)``; the work is in ``enstack.ckpt.tools``
and ``enstack.ckpt.importer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _mirror_of(args: argparse.Namespace):
    """--mirror, else run.mirror_dir of --config, else of the run's saved <run_dir>/config.yaml."""
    if args.mirror:
        return args.mirror
    if args.config:
        import enstack

        return enstack.load_config(args.config, overrides=args.set).run.mirror_dir
    import yaml

    try:
        saved = yaml.safe_load((Path(args.run_dir) / "config.yaml").read_text()) or {}
        return (saved.get("run") or {}).get("mirror_dir")
    except (OSError, yaml.YAMLError, AttributeError):
        return None


def _list(args: argparse.Namespace) -> int:
    from enstack.ckpt import tools as ckpt_tools

    rows = ckpt_tools.list_run(args.run_dir, _mirror_of(args))
    print(json.dumps(rows, indent=2) if args.json else ckpt_tools.format_list(rows))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from enstack.ckpt import tools as ckpt_tools

    report = ckpt_tools.inspect(args.path)
    print(json.dumps(report, indent=2) if args.json else ckpt_tools.format_inspect(report))
    return 0 if report["valid"] else 1


def _verify(args: argparse.Namespace) -> int:
    from enstack.ckpt import tools as ckpt_tools

    result = ckpt_tools.verify(args.path)
    if result["ok"]:
        m = result["manifest"]
        print(f"{args.path}: valid ({m['kind']} checkpoint at step {m['step']}, {len(m['files'])} files, "
              f"{result['tensors']} tensors loaded)")
        return 0
    print(f"{args.path}: INVALID", file=sys.stderr)
    for problem in result["problems"]:
        print(f"  - {problem}", file=sys.stderr)
    return 1


def _export(args: argparse.Namespace) -> int:
    from enstack.ckpt import tools as ckpt_tools

    out = ckpt_tools.export(args.path, args.out_dir, dtype=args.dtype)
    print(f"wrote a Hugging Face model directory to {out} (loads with "
          "transformers.AutoModelForSequenceClassification.from_pretrained)")
    return 0


def _import(args: argparse.Namespace) -> int:
    import enstack
    from enstack.ckpt import importer as ckpt_import

    cfg = enstack.load_config(args.config, overrides=args.set)
    out = ckpt_import.import_checkpoint(args.source, cfg)
    print(f"imported {args.source} as {out}; `enstack train` with the same config resumes from it")
    return 0


def register(sub: "argparse._SubParsersAction") -> None:
    """Adds ``enstack ckpt ...`` to the top-level subcommands."""
    ckpt = sub.add_parser("ckpt", help="checkpoints: list, inspect, verify, export, import")
    acts = ckpt.add_subparsers(dest="ckpt_command", required=True, metavar="ACTION")

    p = acts.add_parser("list", help="every checkpoint of a run (and its mirror): step, position, valid or why not")
    p.add_argument("run_dir", help="the run's output_dir (holds checkpoints/)")
    p.add_argument("--mirror", default=None, help="the run's mirror_dir (default: from --config, else from the "
                   "run's config.yaml)")
    p.add_argument("--config", nargs="*", default=None, help="the run's YAML config(s), to find run.mirror_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override for --config")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_list)

    p = acts.add_parser("inspect", help="position, optimizer step, best metric, SWA, data fingerprint, each file")
    p.add_argument("path", help="a checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_inspect)

    p = acts.add_parser("verify", help="exit 0 only when every checksum matches and every tensor loads")
    p.add_argument("path", help="a checkpoint directory")
    p.set_defaults(func=_verify)

    p = acts.add_parser("export", help="write a Hugging Face model directory (config.json + model.safetensors)")
    p.add_argument("path", help="a checkpoint directory (step-*, best, swa, recovery)")
    p.add_argument("out_dir", help="a new or empty directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(func=_export)

    p = acts.add_parser("import", help="turn a Hugging Face Trainer (or old pipeline) checkpoint into this run's "
                        "first checkpoint, so `enstack train` continues it")
    p.add_argument("source", help="e.g. output/checkpoint-500 (model.safetensors or pytorch_model.bin, "
                   "config.json, optimizer.pt, trainer_state.json or training_state.pth)")
    p.add_argument("config", nargs="+", help="YAML config(s) of the enstack run that continues it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override")
    p.set_defaults(func=_import)
