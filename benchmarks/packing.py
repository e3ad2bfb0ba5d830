"""Packed against padded batches in enstack's encoder on CPU: the A/B behind use_packing.

What it measures: the time of one training step (forward + backward, train mode with
dropout 0.1) or one inference forward of the same model on the same batch, once with
packing forced (``model.packing_min_padding = 0``: position-wise layers on the real tokens
only, attention per sequence) and once with it off (``> 1``: the padded layout with a key
mask), for batches of several lengths and padding shares. Prints the padded/packed time
ratio per batch (> 1: packing is faster) and which layout enstack's rule picks
(``packing_min_padding`` padding share or ``packing_min_length`` tokens), so the rule can
be checked on the machine at hand.

    python benchmarks/packing.py                       # tiny model (hidden 128), 1 thread
    python benchmarks/packing.py --hidden 512 --layers 4 --heads 8 --threads 2
    python benchmarks/packing.py --mode eval

This is a benchmark, not a test: it asserts nothing and only prints numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

import enstack  # noqa: F401  (imports torch first, then the core)
from enstack import model as es_model

# (tokens, shortest length): lengths are drawn uniformly in [shortest, tokens], one row full.
CASES = [(64, 64), (64, 45), (128, 128), (128, 100), (128, 80), (256, 256), (256, 230), (256, 180), (256, 120),
         (512, 512), (512, 400)]


def batch(tokens: int, shortest: int, size: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(shortest, tokens + 1, (size,), generator=g)
    lengths[0] = tokens
    ids = torch.randint(3, vocab, (size, tokens), generator=g)
    ids[:, 0] = 0
    mask = (torch.arange(tokens)[None] < lengths[:, None]).long()
    ids[mask == 0] = 1
    return ids, mask


def best_ms(fn, reps: int, trials: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps * 1000)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = {"model_type": "roberta", "vocab_size": 1000, "hidden_size": args.hidden,
              "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "intermediate_size": 4 * args.hidden, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
              "pad_token_id": 1, "layer_norm_eps": 1e-5}
    model = es_model.from_config(config).train(args.mode == "train")
    default_rule = model.packing_min_padding
    print(f"packed vs padded, {args.mode} step, hidden {args.hidden} x {args.layers} layers, batch {args.batch}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"  {'tokens':>6} {'padding':>8} {'packed ms':>10} {'padded ms':>10} {'ratio':>6}  rule picks")
    for i, (tokens, shortest) in enumerate(CASES):
        ids, mask = batch(tokens, shortest, args.batch, config["vocab_size"], seed=i)

        def step():
            if args.mode == "train":
                model(ids, mask).sum().backward()
            else:
                with torch.no_grad():
                    model(ids, mask)

        times = {}
        for name, threshold in (("packed", 0.0), ("padded", 2.0)):
            model.packing_min_padding = threshold
            times[name] = best_ms(step, args.reps)
        model.packing_min_padding = default_rule
        padding = 1 - mask.float().mean().item()
        picks = "packed" if padding >= default_rule or tokens >= model.packing_min_length else "padded"
        print(f"  {tokens:>6} {100 * padding:>7.1f}% {times['packed']:>10.1f} {times['padded']:>10.1f} "
              f"{times['padded'] / times['packed']:>5.2f}x  {picks}")


if __name__ == "__main__":
    main()
