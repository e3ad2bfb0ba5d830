"""Forward+backward throughput of the enstack encoder against transformers.

Both models hold the same weights (enstack loads the directory transformers saved)
and run the same batch on the same threads; the script prints samples/s of each
and the ratio. Runs alternate between implementations so drift hits both.

    python benchmarks/encoder.py                       # a 6-layer, 512-wide encoder
    python benchmarks/encoder.py --size base           # CodeBERT-base shape (slow on CPU)
    python benchmarks/encoder.py --real-lengths ../shared/data/juliet/juliet_c.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from enstack import model as es_model

SIZES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def lengths_from(path: str, n: int, seq: int):
    """Approximate token lengths of real functions: ~3.2 characters per BPE token."""
    out = []
    with gzip.open(path, "rt") as f:
        for line in f:
            out.append(min(seq, max(8, len(json.loads(line)["func"]) // 3)))
            if len(out) == n:
                break
    return out


def make_batch(batch, seq, vocab, lengths=None):
    g = torch.Generator().manual_seed(0)
    lengths = lengths or [seq] * batch
    width = max(lengths)
    ids = torch.ones((batch, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def step_enstack(m, ids, mask, labels):
    loss = torch.nn.functional.cross_entropy(m(ids, mask), labels)
    loss.backward()


def step_hf(m, ids, mask, labels):
    m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--real-lengths", default=None, help="Juliet JSONL.gz: use real function lengths")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, num_labels=5,
                           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **SIZES[args.size])
    torch.manual_seed(0)
    lengths = lengths_from(args.real_lengths, args.batch, args.seq) if args.real_lengths else None
    ids, mask = make_batch(args.batch, args.seq, config.vocab_size, lengths)
    labels = torch.arange(args.batch) % 5

    with tempfile.TemporaryDirectory() as tmp:
        RobertaForSequenceClassification(config).save_pretrained(tmp)
        runners = {
            "enstack": (es_model.load(tmp).train(), step_enstack),
            "transformers-sdpa": (RobertaForSequenceClassification.from_pretrained(
                tmp, attn_implementation="sdpa").train(), step_hf),
            "transformers-eager": (RobertaForSequenceClassification.from_pretrained(
                tmp, attn_implementation="eager").train(), step_hf),
        }
    times = {name: [] for name in runners}
    for name, (m, step) in runners.items():  # warm-up
        step(m, ids, mask, labels)
    for _ in range(args.reps):
        for name, (m, step) in runners.items():
            for param in (m.parameters() if name == "enstack" else m.parameters()):
                param.grad = None
            start = time.perf_counter()
            step(m, ids, mask, labels)
            times[name].append(time.perf_counter() - start)

    print(f"encoder forward+backward, {args.size} ({SIZES[args.size]}), batch {args.batch} x "
          f"{ids.shape[1]} tokens{' (real lengths)' if lengths else ''}, {args.threads} threads, "
          f"{args.reps} reps, torch {torch.__version__}")
    ours = statistics.median(times["enstack"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<20} {args.batch / med:8.2f} samples/s  (median {med * 1000:8.1f} ms, "
              f"min {min(ts) * 1000:8.1f} ms)  enstack speed ratio {med / ours:5.2f}x")


if __name__ == "__main__":
    main()
