"""Token stores from Python: statistics for ``enstack data stats``.

The store itself is C++ (``enstack.data.TokenStore``, memory-mapped); this module
only summarises it: counts, labels, lengths, truncation and padding waste.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from enstack._C.data import TokenStore

__all__ = ["TokenStore", "format_stats", "stats"]


def _padded_per_batch(lengths: torch.Tensor, batch_size: int, seed: int, max_length: int) -> int:
    """Tokens the loader computes on for an epoch of this store: the epoch plan of ``seed``
    (epoch 0, shuffled), each batch padded by the loader's own rule (``_C.data.padded_length``)."""
    from enstack._C.data import EpochPlan, padded_length

    plan = EpochPlan(len(lengths), batch_size, seed, 0)
    total = 0
    for k in range(len(plan)):
        batch = lengths[plan.batch(k)]
        total += padded_length(int(batch.max()), 8, max_length) * len(batch)
    return total


def stats(store: TokenStore, batch_size: int = 16, seed: int = 0,
          label_names: Optional[List[str]] = None) -> Dict:
    """Summary of a token store as a dict (see ``format_stats`` for the printed form)."""
    info = store.info
    lengths = store.lengths()
    count = len(lengths)
    out: Dict = {"path": str(store.path), "count": count, "fingerprint": info["fingerprint"],
                 "tokenizer_identity": info["tokenizer_identity"], "vocab_size": info["vocab_size"],
                 "max_length": info["max_length"], "total_tokens": int(lengths.sum()) if count else 0}
    labels = store.all_labels()
    if labels.dim() == 1:
        values, counts = torch.unique(labels, return_counts=True)
        names = label_names or [str(int(v)) for v in values]
        out["labels"] = {(names[int(v)] if label_names else str(int(v))): int(c) for v, c in zip(values, counts)}
    else:
        out["labels"] = {(label_names[k] if label_names else str(k)): int(labels[:, k].sum())
                         for k in range(labels.shape[1])}
    if count == 0:
        return out
    as_float = lengths.double()
    out["length_percentiles"] = {str(q): float(torch.quantile(as_float, q / 100.0)) for q in (50, 90, 99)}
    out["length_max"] = int(lengths.max())
    max_length = info["max_length"]
    out["share_truncated"] = float((lengths >= max_length).double().mean()) if max_length > 0 else 0.0
    real = out["total_tokens"]
    if max_length > 0:
        out["padding_waste_fixed"] = 1.0 - real / (count * max_length)
    per_batch = _padded_per_batch(lengths, batch_size, seed, max_length)
    out["padding_waste_per_batch"] = 1.0 - real / per_batch
    out["batch_size"] = batch_size
    return out


def format_stats(s: Dict) -> str:
    lines = [f"token store      {s['path']}",
             f"examples         {s['count']:,}   tokens {s['total_tokens']:,}",
             f"fingerprint      {s['fingerprint']}   tokenizer {s['tokenizer_identity']}",
             f"vocab size       {s['vocab_size']:,}   max length {s['max_length']}"]
    total = max(1, s["count"])
    labels = ", ".join(f"{k}: {v:,} ({100 * v / total:.1f}%)" for k, v in s["labels"].items())
    lines.append(f"labels           {labels}")
    if s["count"]:
        p = s["length_percentiles"]
        lines.append(f"length           p50 {p['50']:.0f}, p90 {p['90']:.0f}, p99 {p['99']:.0f}, max {s['length_max']}")
        lines.append(f"truncated        {100 * s['share_truncated']:.1f}% at max length {s['max_length']}")
        if "padding_waste_fixed" in s:
            lines.append(f"padding waste    {100 * s['padding_waste_fixed']:.1f}% padded to max length; "
                         f"{100 * s['padding_waste_per_batch']:.1f}% padded per batch of {s['batch_size']}")
    return "\n".join(lines)
