"""The ``enstack`` command line.

Errors print one message on stderr and exit non-zero (2 for enstack's own errors);
``--debug`` (anywhere on the command line) shows the traceback instead.
Also ``python -m enstack`` and ``python -m enstack.cli``. The commands live in
this module (doctor, model, train, data) and in ``ckpt``, ``run`` (eval, predict,
bench) and ``stack``, each with a ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence


def _doctor(args: argparse.Namespace) -> int:
    import torch

    import enstack
    from enstack import _C, _build_info

    info = _C.util.build_info()
    rows = [
        ("enstack", enstack.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("torch (running)", torch.__version__),
        ("torch (compiled against)", _build_info.torch_version),
        ("C++ compiler", _build_info.cxx_compiler),
        ("build type", _build_info.build_type),
        ("torch build", f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"),
        ("cuDNN", str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        rows.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}"))
    rows.append(("bf16 on CUDA", str(torch.cuda.is_available() and torch.cuda.is_bf16_supported())))
    rows.append(("intra-op threads", str(info["intra_op_threads"])))
    for dep in info["dependencies"].split():
        name, _, how = dep.partition("=")
        rows.append((f"C++ dep {name}", how.replace("-", " ", 1)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _model_init(args: argparse.Namespace) -> int:
    import torch

    from enstack import model

    torch.manual_seed(args.seed)
    m = model.from_config(Path(args.config), num_labels=args.num_labels)
    m.save_pretrained(args.out_dir)
    print(f"wrote a freshly initialised {m!r} ({m.num_parameters():,} parameters) to {args.out_dir}")
    return 0


def _model_check(args: argparse.Namespace) -> int:
    """Loads a model directory, runs a forward and backward pass, saves and reloads it."""
    import tempfile

    import torch

    from enstack import model

    m = model.load(args.model_dir)
    config = model.config_of(m)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config["vocab_size"], (args.batch_size, args.seq_len), generator=generator)
    mask = torch.ones_like(ids)
    mask[1:, args.seq_len // 2 :] = 0  # a mix of full and padded rows
    ids = ids.masked_fill(mask == 0, config["pad_token_id"])
    labels = torch.arange(args.batch_size) % m.num_labels

    m.train()
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(m(ids, mask), labels)
    loss.backward()
    train_s = time.perf_counter() - start
    m.eval()
    with torch.no_grad():
        logits = m(ids, mask)
    with tempfile.TemporaryDirectory() as tmp:
        m.save_pretrained(tmp)
        with torch.no_grad():
            same = torch.equal(model.load(tmp).eval()(ids, mask), logits)
    print(f"model           {m!r}")
    print(f"parameters      {m.num_parameters():,}")
    print(f"logits          {tuple(logits.shape)}  first row {[round(x, 4) for x in logits[0].tolist()]}")
    print(f"train step      loss {loss.item():.4f}, forward+backward {train_s * 1000:.1f} ms "
          f"(batch {args.batch_size} x {args.seq_len})")
    print(f"save/reload     {'identical logits' if same else 'LOGITS DIFFER'}")
    return 0 if same else 1


def _data_stats(args: argparse.Namespace) -> int:
    from enstack.data import store

    sidecar = Path(args.store).with_suffix(".json")  # written by `enstack data prepare`
    names = json.loads(sidecar.read_text()).get("label_names") if sidecar.exists() else None
    s = store.stats(store.TokenStore(args.store, args.verify), batch_size=args.batch_size, label_names=names)
    print(json.dumps(s, indent=2) if args.json else store.format_stats(s))
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    import enstack
    from enstack import colab
    from enstack.data import prepare, store

    cfg = enstack.load_config(args.config, overrides=args.set)
    colab.check_drive_paths(cfg)
    with enstack._C.util.RunLock(str(cfg.run.output_dir), "preparing data"):
        prepared = prepare.prepare(cfg)
    for name, split in prepared.items():
        s = store.stats(split.open(), label_names=split.label_names)
        state = "reused" if split.reused else "built"
        print(f"{name:<10} {state:<6} {s['count']:>8,} functions  p50/p90/p99 tokens "
              f"{s['length_percentiles']['50']:.0f}/{s['length_percentiles']['90']:.0f}/"
              f"{s['length_percentiles']['99']:.0f}  truncated {100 * s['share_truncated']:.1f}%  {split.store_path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import enstack

    cfg = enstack.load_config(args.config, overrides=args.set)
    try:
        result = enstack.Trainer(cfg).fit(resume=args.resume, tensorboard=args.tensorboard, plots=args.plots,
                                          allow_changes=args.allow_changes, take_over_mirror=args.take_over_mirror)
    except enstack.CheckpointError as e:
        if "changed since it was saved" not in str(e):
            raise
        # The core's message speaks Python (fit(...)); say it in this command's flags too.
        raise enstack.CheckpointError(
            f"{e} On the command line: `--set run.output_dir=NEW_DIR` trains a separate run, or "
            "`--allow-changes` resumes this one with the new settings anyway.") from None
    best = result.best_eval or {}
    last = result.last_eval or {}
    print(f"trained to step {result.global_step} ({result.epochs_completed} epochs"
          f"{', early stopped' if result.early_stopped else ''}{', resumed' if result.resumed else ''})")
    for name, e in (("last eval", last), ("best eval", best)):
        if e:
            print(f"{name:<10} step {e.get('step')}: accuracy {e['accuracy']:.4f}  f1_weighted {e['f1_weighted']:.4f}"
                  f"  f1_macro {e['f1_macro']:.4f}  auc_weighted {e['auc_weighted'] or float('nan'):.4f}")
    print(_saved_summary(result))
    return 0


def _saved_summary(result) -> str:
    """What the disk holds after a fit, never what was merely attempted."""
    lines = []
    if result.save_errors:
        lines.append(f"{result.save_errors} checkpoint save(s) failed; last: {result.last_save_error}")
    if result.best_dir:
        best_step = (result.best_eval or {}).get("step")
        note = ("" if best_step in (None, result.best_saved_step) else
                f"; the best evaluation (step {best_step}) could not be written, this is the previous best")
        lines.append(f"best model {result.best_dir} (step {result.best_saved_step}{note})")
    else:
        lines.append("best model: none saved")
    lines.append(f"final checkpoint {result.last_checkpoint}" if result.last_checkpoint else
                 f"no checkpoint saved ({result.save_errors} save errors"
                 f"{', last: ' + result.last_save_error if result.last_save_error else ''})")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    from enstack._logging import LOG_LEVELS_TEXT

    parser = argparse.ArgumentParser(prog="enstack", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--log-level", default=None, help=LOG_LEVELS_TEXT)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = sub.add_parser("doctor", help="print versions, devices and how enstack was built")
    doctor.set_defaults(func=_doctor)

    model = sub.add_parser("model", help="model directories: create and check")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    init = model_sub.add_parser("init", help="write a freshly initialised model for a config.json")
    init.add_argument("config", help="a Hugging Face config.json (e.g. configs/models/tiny-roberta.json)")
    init.add_argument("out_dir")
    init.add_argument("--num-labels", type=int, default=None)
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_model_init)
    check = model_sub.add_parser("check", help="load a model directory, run forward/backward, save and reload")
    check.add_argument("model_dir")
    check.add_argument("--batch-size", type=int, default=4)
    check.add_argument("--seq-len", type=int, default=64)
    check.set_defaults(func=_model_check)
    train = sub.add_parser("train", help="fine-tune a model as a config describes (resumes by default)")
    train.add_argument("config", nargs="+", help="YAML config file(s), composed left to right")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=3")
    train.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                       help="continue from the newest valid checkpoint of the run (default) or start over")
    train.add_argument("--allow-changes", action="store_true",
                       help="resume even though the data or training configuration changed since the checkpoint")
    train.add_argument("--take-over-mirror", action="store_true",
                       help="take run.mirror_dir's lease over although another runtime renewed it recently "
                            "(only when you know that runtime is dead)")
    train.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                       help="write TensorBoard events to <output_dir>/logs (default: on)")
    train.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                       help="draw curves, confusion matrices and ROC curves into <output_dir>/metrics at the end")
    train.set_defaults(func=_train)

    data = sub.add_parser("data", help="datasets and token stores")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = data_sub.add_parser("prepare", help="ingest, tokenize and store every split of a config (reused when unchanged)")
    prep.add_argument("config", nargs="+", help="YAML config file(s), composed left to right")
    prep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. model.max_length=256")
    prep.set_defaults(func=_data_prepare)
    stats = data_sub.add_parser("stats", help="count, labels, lengths, truncation and padding of a token store")
    stats.add_argument("store", help="a .tokens file written by enstack")
    stats.add_argument("--batch-size", type=int, default=16, help="batch size for the per-batch padding estimate")
    stats.add_argument("--verify", action="store_true", help="also verify the data checksum")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_data_stats)
    from enstack.cli import ckpt, run, stack

    ckpt.register(sub)  # enstack ckpt ...
    run.register(sub)  # enstack eval, predict, bench
    stack.register(sub)  # enstack stack
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted after the command too (`enstack train x.yaml --debug`), where users type it.
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]
    if debug:
        argv = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.debug = args.debug or debug
    try:
        import enstack

        if args.log_level:
            enstack.set_log_level(args.log_level)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except KeyboardInterrupt as e:
        print(f"enstack: {str(e) or 'interrupted'}", file=sys.stderr)
        # As a shell reports a process ended by the signal: 128 + SIGTERM, 128 + SIGINT.
        return 143 if type(e).__name__ == "Terminated" else 130
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into messages
        if args.debug:
            raise
        name = type(e).__name__
        print(f"enstack: {name}: {e}", file=sys.stderr)
        return 2 if name.endswith("Error") and type(e).__module__ == "enstack" else 1

