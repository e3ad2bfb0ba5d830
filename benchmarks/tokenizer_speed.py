"""Tokenization throughput of enstack's native byte-level BPE against the
`tokenizers` library, on real C functions (the Juliet corpus: JSONL, `func` field).

A byte-level BPE vocabulary is trained with `tokenizers` on part of the corpus
(or taken from --vocab-dir), saved as tokenizer.json, and both implementations
encode the whole corpus from Python with their batch call (RoBERTa framing, the
same ids: the script checks), single-threaded and on all cores. Each measurement
runs in a fresh process, because `tokenizers` fixes its thread pool
(RAYON_NUM_THREADS) at first use; the best of --repeats runs counts, timed with
Python's garbage collector off (as timeit does) for both.

    python benchmarks/tokenizer_speed.py [CORPUS] [--vocab-size 8000] [--vocab-dir DIR] [--max-length 512]
"""

from __future__ import annotations

import argparse
import array
import gc
import gzip
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

DEFAULT_CORPUS = "../shared/data/juliet/juliet_c.jsonl.gz"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def read_corpus(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["func"] for line in f if line.strip()]


def train_vocab(funcs: list[str], vocab_size: int, out: pathlib.Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(funcs, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS,
                            show_progress=False)
    tok.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(out / "tokenizer.json"))


def digest(batches: list[list[int]]) -> str:
    h = hashlib.sha256()
    for ids in batches:
        h.update(len(ids).to_bytes(4, "little"))
        h.update(array.array("i", ids).tobytes())
    return h.hexdigest()[:16]


def worker(args: argparse.Namespace) -> None:
    """One implementation at one thread count: prints {"seconds", "digest"} as JSON."""
    funcs = read_corpus(args.corpus)
    max_length = args.max_length or None
    if args.worker == "tokenizers":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(pathlib.Path(args.vocab_dir) / "tokenizer.json"))
        if max_length:
            tok.enable_truncation(max_length)

        def run():
            return [e.ids for e in tok.encode_batch(funcs)]
    else:
        try:
            from enstack.data import Tokenizer
        except ImportError:
            from enstack._C.data import Tokenizer
        tok = Tokenizer.from_pretrained(args.vocab_dir)

        def run():
            return tok.encode_batch(funcs, max_length=max_length, num_threads=args.threads)

    best, ids = float("inf"), None
    for _ in range(args.repeats):
        ids = None
        gc.collect()
        gc.disable()  # as timeit does: collections triggered by the id lists would dominate
        start = time.perf_counter()
        ids = run()
        best = min(best, time.perf_counter() - start)
        gc.enable()
    print(json.dumps({"seconds": best, "digest": digest(ids)}))


def measure(impl: str, threads: int, args: argparse.Namespace, vocab_dir: str) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    cmd = [sys.executable, __file__, args.corpus, "--worker", impl, "--threads", str(threads),
           "--vocab-dir", vocab_dir, "--repeats", str(args.repeats), "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=DEFAULT_CORPUS, help="JSONL(.gz) with a `func` field")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--vocab-dir", help="a directory with tokenizer.json to use instead of training one")
    parser.add_argument("--train-fraction", type=float, default=0.25, help="share of the corpus to train on")
    parser.add_argument("--max-length", type=int, default=0, help="truncate to this many ids (0: no truncation)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the 'all threads' count")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=["enstack", "tokenizers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not os.path.exists(args.corpus):
        sys.exit(f"corpus {args.corpus} not found; pass the path of a JSONL(.gz) file with a `func` field")

    funcs = read_corpus(args.corpus)
    megabytes = sum(len(f.encode("utf-8")) for f in funcs) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = args.vocab_dir
        if vocab_dir is None:
            vocab_dir = tmp
            step = max(1, round(1 / args.train_fraction))
            train_vocab(funcs[::step], args.vocab_size, pathlib.Path(tmp))
            size = len(json.loads((pathlib.Path(tmp) / "tokenizer.json").read_text())["model"]["vocab"])
            print(f"vocabulary: {size} tokens (asked for {args.vocab_size}; training stops when no pair occurs "
                  f"twice), trained by tokenizers on {len(funcs[::step])} functions")
        print(f"corpus: {len(funcs)} functions, {megabytes:.1f} MB ({args.corpus}); "
              f"max_length={args.max_length or 'none'}; best of {args.repeats}")
        print(f"{'threads':>7}  {'implementation':<14} {'seconds':>8} {'functions/s':>12} {'MB/s':>8}")
        for threads in sorted({1, args.threads}):
            results = {impl: measure(impl, threads, args, vocab_dir) for impl in ["tokenizers", "enstack"]}
            for impl, r in results.items():
                print(f"{threads:>7}  {impl:<14} {r['seconds']:>8.3f} {len(funcs) / r['seconds']:>12.0f} "
                      f"{megabytes / r['seconds']:>8.1f}")
            same = results["tokenizers"]["digest"] == results["enstack"]["digest"]
            ratio = results["tokenizers"]["seconds"] / results["enstack"]["seconds"]
            print(f"{'':>7}  ratio enstack/tokenizers ({threads} thread{'s' if threads > 1 else ''}): "
                  f"{ratio:.2f}x; ids identical: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
