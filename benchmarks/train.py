"""Training throughput of enstack's native loop against the Hugging Face Trainer.

What it measures: samples/s and real (non-pad) tokens/s of one epoch of training
of the same tiny RoBERTa classifier (hidden 128, 2 layers, 4 heads, intermediate
512, vocabulary = the SentencePiece tokenizer's) on the same token ids with the
same hyperparameters (batch size, no accumulation, AdamW lr / weight decay /
linear warmup schedule / clipping at 1.0, max_length 256, one epoch, no
evaluation) on the same number of intra-op threads, by

* enstack: ``enstack.Trainer(cfg).fit(resume=False)`` (the native C++ loop);
* transformers: ``Trainer.train()`` with its best CPU settings: sdpa attention,
  length-grouped sampling, dynamic padding (``DataCollatorWithPadding``,
  ``pad_to_multiple_of=8``, as enstack's loader pads), the fused AdamW
  (``adamw_torch_fused``, the Trainer's default), no dataloader workers, no
  reporting, no saving, no evaluation, ``use_cpu=True``.

Both read the identical token ids: the data is tokenized once by
``enstack.data.prepare.prepare`` (a SentencePiece tokenizer trained from scratch,
as in configs/demo.yaml) and the transformers dataset is built from that token
store's ``ids(i)``/``labels(i)``, so tokenization is excluded from both. Each
run is a separate subprocess (``--worker``); only the training call is timed
(model construction, data loading and imports are not). Two times are printed
per run:

* ``call``: wall time of ``fit()`` / ``train()`` as a whole. For enstack this
  includes the checkpoint it always writes at the epoch end (and the final one;
  ``save_steps`` is set beyond the run, so none is written mid-epoch) and one
  evaluation of 16 validation functions after the last step (enstack's
  configuration requires a validation set; it is not trained on); the
  transformers Trainer saves and evaluates nothing.
* ``loop``: from the start of training (enstack's ``begin`` record, the
  Trainer's ``on_train_begin``) to the end of the last optimizer step
  (enstack logs every step, ``logging_steps=1``; the Trainer logs every 50 steps
  and its ``on_step_end`` is timed), i.e. without enstack's epoch-end saves.

samples/s and real tokens/s (sum of unpadded, truncated lengths / time) are
computed from ``loop``; the ratio enstack/transformers is printed beside the
DESIGN target (1.5x). enstack's model-FLOP utilisation is estimated as
(6 x non-embedding parameters + 12 x layers x hidden x seq) FLOPs per real
token, seq being the token-weighted mean real sequence length, times real
tokens / loop time (printed for both trainers), against an fp32 GEMM peak measured in the same run (best
rate of ``torch.mm`` of two 1024x1024 fp32 matrices on the same threads, before
and after the training runs). The ``padding`` column is the share of pad tokens
in the batches each trainer built (their length groupers differ), and
``padded tok/s`` the rate over all tokens computed on, pads included: the
speed of the step itself, apart from how well each trainer batches.

The default is 1 thread: on a shared 2-core machine, 2 intra-op threads next
to other work make every step many times slower (OpenMP threads waiting on
each other), which measures the neighbours, not the trainers; use
``--threads 2`` on an idle machine. The 1-minute load average is printed.

By default the run uses 1,200 synthetic functions (``enstack.data.synthetic``)
and both samplers: with length grouping (enstack ``data.group_by_length``,
transformers ``group_by_length``, in 5.x
``train_sampling_strategy="group_by_length"``) and without (random order, padded per batch).

    python benchmarks/train.py                                  # 1,200 synthetic functions, ~2.5 min
    python benchmarks/train.py --examples 400 --grouping grouped   # quick smoke run
    python benchmarks/train.py --juliet ../shared/data/juliet/juliet_c.jsonl.gz --examples 2000 --grouping grouped
    python benchmarks/train.py --threads 2 --batch-size 32    # on an idle machine
    python benchmarks/train.py --precision bf16 --grouping grouped   # bf16 autocast in both (AMX CPUs)

This is a benchmark, not a test: it asserts nothing and only prints numbers.
"""

from __future__ import annotations

import argparse
import os
import sys

import gzip
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
TARGET_RATIO = 1.5
VALIDATION = 16
SHAPES = {"tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
          # RoBERTa-base, CodeBERT's shape: the one that matters on a GPU (scripts/gpu-check.sh)
          "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
SHAPE = dict(SHAPES["tiny"])  # set from --shape in the parent and from the spec in the workers


# -- data and configuration (parent process) -----------------------------------------------------
def write_data(args, path: Path, validation: Path) -> Dict[str, Any]:
    """Writes the training functions (and a 16-function validation file, which enstack's config
    requires; it is evaluated once, after the last step) as JSONL; returns the config overrides."""
    if args.juliet:
        with gzip.open(args.juliet, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        rng = random.Random(args.seed)  # a seeded sample, so lengths represent the whole file
        rows = rng.sample(rows, min(args.examples + VALIDATION, len(rows)))
        for out, part in ((path, rows[VALIDATION:]), (validation, rows[:VALIDATION])):
            with out.open("w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps({"id": r["id"], "func": r["func"], "cwe": r["cwe"]}) + "\n")
        return {"data.text_column": "func", "data.label_columns": ["cwe"], "data.id_column": "id"}
    from enstack.data import synthetic

    synthetic.write_jsonl(path, args.examples, seed=args.seed)
    synthetic.write_jsonl(validation, VALIDATION, seed=args.seed + 1)
    return {"data.text_column": "func", "data.label_columns": ["label"], "data.id_column": "id"}


def model_config(vocab_size: int) -> Dict[str, Any]:
    return {"model_type": "roberta", "vocab_size": vocab_size, **SHAPE, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514,
            "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5,
            "initializer_range": 0.02}


def overrides(args, work: Path, data_overrides: Dict[str, Any]) -> Dict[str, Any]:
    o = {"run.output_dir": str(work / "run"), "run.num_threads": args.threads, "run.seed": args.seed,
         "data.format": "jsonl", "data.train": str(work / "functions.jsonl"),
         "data.validation": str(work / "validation.jsonl"),
         "data.test": None, "data.split": None, "data.label_policy": "class", "data.num_workers": args.threads,
         "model.name_or_path": str(work / "tiny-roberta.json"), "model.from_scratch": True,
         "model.max_length": args.max_length, "model.tokenizer.kind": "sentencepiece",
         "model.tokenizer.vocab_size": args.vocab, "train.epochs": 1, "train.batch_size": args.batch_size,
         "train.grad_accum": 1, "train.learning_rate": args.lr, "train.weight_decay": 0.01,
         "train.warmup_ratio": 0.1, "train.max_grad_norm": 1.0, "train.precision": args.precision,
         "run.device": args.device,
         "train.eval_strategy": "epoch", "train.save_steps": 1_000_000_000, "train.logging_steps": 1}
    o.update(data_overrides)
    return o


def gemm_peak(threads: int, device: str = "cpu", precision: str = "fp32", reps: int = 20, trials: int = 5) -> float:
    """Best GEMM rate (FLOP/s) of torch.mm on n x n matrices (1024 on the CPU on `threads`
    threads, 8192 on a GPU) in the precision the trainers compute in."""
    import torch

    torch.set_num_threads(threads)
    n = 1024 if device == "cpu" else 8192
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device == "cpu":
        dtype = torch.float32  # CPU autocast runs the model's GEMMs in fp32 or bf16; fp32 is the reference
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(trials):
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
    return 2.0 * n ** 3 / best


# -- workers (one subprocess per run) ------------------------------------------------------------
def worker_enstack(spec: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    import enstack

    torch.set_num_threads(spec["threads"])
    o = dict(spec["overrides"], **{"data.group_by_length": spec["grouped"]})
    shutil.rmtree(Path(o["run.output_dir"]) / "checkpoints", ignore_errors=True)
    trainer = enstack.Trainer(enstack.load_config(str(DEMO_CONFIG), overrides=o))
    prepared = trainer.prepare()  # prepare (reuses the store built by the parent) + model: not timed
    marks: Dict[str, Any] = {"logs": 0, "saves": []}

    def on_record(r):
        now = time.perf_counter()
        if r["event"] == "begin":
            marks["begin"] = now
        elif r["event"] == "log":
            marks["last_step"] = now
            marks["logs"] += 1
            marks["steps"] = r["step"]
        elif r["event"] == "save":
            marks["saves"].append(now)
        return None

    start = time.perf_counter()
    result = trainer.fit(resume=False, callback=on_record, progress=False, tensorboard=False, plots=False)
    end = time.perf_counter()
    params = dict(trainer.model.named_parameters())
    # The padded tokens the loader produced: the epoch plan is a pure function of (seed, epoch, data).
    from enstack._C.data import EpochPlan

    store = prepared.splits["train"].open()
    lengths = store.lengths().tolist()
    plan = EpochPlan(len(store), spec["batch_size"], spec["seed"], 0, True, spec["grouped"], store.lengths())
    padded = sum(-(-max(lengths[i] for i in plan.batch(k)) // 8) * 8 * plan.batch_size_of(k)
                 for k in range(plan.num_batches))
    return {"call_s": end - start, "loop_s": marks["last_step"] - marks["begin"], "steps": result.global_step,
            "padded_tokens": padded,
            "save_s": end - marks["last_step"], "saves": len(marks["saves"]),
            "threads_after": torch.get_num_threads(), **param_counts(params)}


def param_counts(named: Dict[str, Any]) -> Dict[str, int]:
    total = sum(p.numel() for p in named.values())
    embedding = sum(p.numel() for n, p in named.items() if "embeddings." in n and "LayerNorm" not in n)
    return {"params": total, "non_embedding_params": total - embedding}


def worker_transformers(spec: Dict[str, Any]) -> Dict[str, Any]:
    import inspect

    import torch
    import transformers
    from tokenizers import Tokenizer, models
    from transformers import (DataCollatorWithPadding, PreTrainedTokenizerFast, RobertaConfig,
                              RobertaForSequenceClassification, Trainer, TrainerCallback, TrainingArguments)

    from enstack._C.data import TokenStore

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    store = TokenStore(spec["store"])
    features = [{"input_ids": store.ids(i), "labels": int(store.labels(i)[0])} for i in range(len(store))]
    for f in features:
        f["attention_mask"] = [1] * len(f["input_ids"])
    # A stand-in tokenizer: only its pad() is used (ids come from enstack's store).
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    assert tok.pad_token_id == 1

    mc = model_config(spec["vocab_size"])
    config = RobertaConfig(**{k: v for k, v in mc.items() if k != "model_type"}, num_labels=spec["num_labels"])
    torch.manual_seed(spec["seed"])
    model = RobertaForSequenceClassification._from_config(config, attn_implementation="sdpa")

    grouping = {}
    names = inspect.signature(TrainingArguments.__init__).parameters
    # transformers 5.x folded warmup_ratio into warmup_steps (a float < 1 is a ratio)
    grouping.update({"warmup_ratio": 0.1} if "warmup_ratio" in names else {"warmup_steps": 0.1})
    if "group_by_length" in names:  # transformers 4.x
        grouping["group_by_length"] = spec["grouped"]
    else:  # transformers 5.x renamed it
        grouping["train_sampling_strategy"] = "group_by_length" if spec["grouped"] else "random"
    args = TrainingArguments(
        output_dir=spec["hf_output_dir"], per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1, learning_rate=spec["lr"], weight_decay=0.01,
        lr_scheduler_type="linear", max_grad_norm=1.0, num_train_epochs=1, seed=spec["seed"],
        optim="adamw_torch_fused", eval_strategy="no", save_strategy="no", logging_steps=50, report_to=[],
        dataloader_num_workers=0, use_cpu=spec["device"] == "cpu", disable_tqdm=True,
        bf16=spec["precision"] == "bf16", fp16=spec["precision"] == "fp16",
        **grouping)

    marks: Dict[str, Any] = {}

    class Times(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            marks["begin"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            marks["last_step"] = time.perf_counter()

    collator = DataCollatorWithPadding(tok, pad_to_multiple_of=8)

    def counting_collator(batch):  # counts the padded tokens it produces (a few ns per batch)
        out = collator(batch)
        marks["padded_tokens"] = marks.get("padded_tokens", 0) + out["input_ids"].numel()
        return out

    trainer = Trainer(model=model, args=args, train_dataset=features, processing_class=tok,
                      data_collator=counting_collator, callbacks=[Times()])
    start = time.perf_counter()
    out = trainer.train()
    end = time.perf_counter()
    return {"call_s": end - start, "loop_s": marks["last_step"] - marks["begin"], "steps": out.global_step,
            "padded_tokens": marks["padded_tokens"], "hf_train_runtime_s": out.metrics.get("train_runtime"),
            "threads_after": torch.get_num_threads(),
            "transformers": transformers.__version__, **param_counts(dict(model.named_parameters()))}


def run_worker(kind: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)],
                          capture_output=True, text=True, cwd=str(REPO))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    sys.stderr.write(proc.stdout + proc.stderr)
    raise SystemExit(f"the {kind} worker failed (exit {proc.returncode})")


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=1200, help="training functions (default 1200)")
    p.add_argument("--juliet", default=None, help="Juliet JSONL(.gz) with func and cwe: a seeded sample of "
                   "--examples functions instead of synthetic ones")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000, help="SentencePiece vocabulary size (= the model's)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads for both (default 1: robust on a shared machine)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="both trainers: fp32, or bf16/fp16 autocast (transformers bf16=True / fp16=True)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: where both trainers run")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                   help="tiny (128 x 2 layers, default) or base (768 x 12 layers, CodeBERT's shape; for a GPU)")
    p.add_argument("--grouping", choices=["both", "grouped", "ungrouped"], default="both",
                   help="length-grouped sampling, random order, or both (default)")
    p.add_argument("--workdir", default=None, help="keep the data and runs here (default: a temp dir)")
    p.add_argument("--worker", choices=["enstack", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        spec = json.loads(args.spec)
        SHAPE.update(SHAPES[spec["shape"]])
        fn = worker_enstack if args.worker == "enstack" else worker_transformers
        print("RESULT " + json.dumps(fn(spec)), flush=True)
        return

    import logging

    import torch

    import enstack
    from enstack.data.prepare import prepare

    SHAPE.update(SHAPES[args.shape])
    logging.getLogger("enstack").setLevel(logging.WARNING)
    own_tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        own_tmp = tempfile.TemporaryDirectory(prefix="enstack-bench-train-")
        work = Path(own_tmp.name)
    try:
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        data_overrides = write_data(args, work / "functions.jsonl", work / "validation.jsonl")
        (work / "tiny-roberta.json").write_text(json.dumps(model_config(args.vocab)))
        o = overrides(args, work, data_overrides)
        cfg = enstack.load_config(str(DEMO_CONFIG), overrides=o)
        split = prepare(cfg, progress=False)["train"]
        store = split.open()
        lengths = store.lengths().long()
        n, real_tokens = len(store), int(lengths.sum())
        seq_token_weighted = float((lengths.double() ** 2).sum() / lengths.double().sum())
        vocab_size = int(store.info["vocab_size"])
        setup_s = time.perf_counter() - t0

        peak_before = gemm_peak(args.threads, args.device, args.precision)
        spec = {"threads": args.threads, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
                "precision": args.precision, "device": args.device, "shape": args.shape,
                "overrides": o, "store": str(split.store_path), "vocab_size": vocab_size,
                "num_labels": len(split.label_names), "hf_output_dir": str(work / "hf")}
        groupings = {"both": [True, False], "grouped": [True], "ungrouped": [False]}[args.grouping]
        results = {}
        for grouped in groupings:
            for kind in ("enstack", "transformers"):
                results[(kind, grouped)] = run_worker(kind, dict(spec, grouped=grouped))
        peak_after = gemm_peak(args.threads, args.device, args.precision)
        peak = max(peak_before, peak_after)

        source = f"Juliet sample ({args.juliet})" if args.juliet else "synthetic functions (enstack.data.synthetic)"
        ours = next(iter(results.values()))
        print(f"training throughput: enstack {enstack.__version__} vs transformers "
              f"{results[('transformers', groupings[0])]['transformers']}, torch {torch.__version__}")
        print(f"  data    {n:,} {source}; {real_tokens:,} real tokens (mean {real_tokens / n:.1f}, "
              f"token-weighted seq {seq_token_weighted:.1f}), max_length {args.max_length}, vocab {vocab_size}")
        print(f"  model   RoBERTa {SHAPE}, {ours['params']:,} parameters "
              f"({ours['non_embedding_params']:,} non-embedding), dropout 0.1")
        print(f"  setup   batch {args.batch_size}, grad_accum 1, lr {args.lr:g}, 1 epoch, {args.precision}, {args.threads} "
              f"threads; tokenization and setup ({setup_s:.1f} s) excluded")
        print(f"  machine {os.cpu_count()} cores; 1-minute load average {load_before:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after (other work slows both and adds noise)")
        print(f"  note    enstack always writes a checkpoint at the epoch end (save_steps set beyond the run) and "
              f"evaluates {VALIDATION} validation functions after the last step: in 'call', not in 'loop'")
        flops_per_token = 6 * ours["non_embedding_params"] + 12 * SHAPE["num_hidden_layers"] * \
            SHAPE["hidden_size"] * seq_token_weighted
        print(f"  peak    {args.precision if args.device != 'cpu' else 'fp32'} GEMM torch.mm on {args.device}: "
              f"{peak / 1e9:.1f} GFLOP/s "
              f"(before {peak_before / 1e9:.1f}, after {peak_after / 1e9:.1f}); model "
              f"{flops_per_token / 1e6:.2f} MFLOP per real token (6N + 12*L*H*seq)")
        print()
        print(f"  {'run':<28} {'steps':>5} {'call s':>8} {'loop s':>8} {'samples/s':>10} {'real tok/s':>11} "
              f"{'MFU':>6} {'padding':>8} {'padded tok/s':>13}")
        for (kind, grouped), r in results.items():
            loop = r["loop_s"]
            mfu = flops_per_token * real_tokens / loop / peak
            padding = 1 - real_tokens / r["padded_tokens"]
            label = f"{kind} ({'grouped' if grouped else 'random order'})"
            print(f"  {label:<28} {r['steps']:>5} {r['call_s']:>8.2f} {loop:>8.2f} {n / loop:>10.1f} "
                  f"{real_tokens / loop:>11.0f} {100 * mfu:>5.1f}% {100 * padding:>7.1f}% "
                  f"{r['padded_tokens'] / loop:>13.0f}")
        print()
        for grouped in groupings:
            e, h = results[("enstack", grouped)], results[("transformers", grouped)]
            ratio_loop, ratio_call = h["loop_s"] / e["loop_s"], h["call_s"] / e["call_s"]
            verdict = "meets" if ratio_loop >= TARGET_RATIO else "BELOW"
            print(f"  ratio enstack/transformers ({'grouped' if grouped else 'random order'}): "
                  f"{ratio_loop:.2f}x loop, {ratio_call:.2f}x whole call (incl. enstack's "
                  f"{e['saves']} epoch-end saves, {e['save_s']:.2f} s); target {TARGET_RATIO:.1f}x: {verdict}")
        threads_seen = sorted({r["threads_after"] for r in results.values()})
        if threads_seen != [args.threads]:
            print(f"  warning: threads after training were {threads_seen}, not {args.threads}")
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()


if __name__ == "__main__":
    main()
