"""The training progress bar: tqdm over optimizer steps, fed by the native loop's records.

``tqdm.auto`` draws a text bar in a terminal and a widget in Jupyter/Colab. The bar
counts only the steps that will run in this call (a run resumed at step 900 of 1000
shows 0/100, not 900/1000), so its rate and time estimate are those of this session.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

__all__ = ["ProgressBar"]


class ProgressBar:
    """A record handler: ``bar.update(record)`` for every record, ``bar.close()`` at the end."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.last_step: Optional[int] = None
        self._postfix: Dict[str, str] = {}

    def update(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        event = record.get("event")
        if event == "begin":
            self._begin(record)
            return
        if self.bar is None:
            return
        if event == "log":
            self.bar.update(record["step"] - self.last_step)
            self.last_step = record["step"]
            self._postfix.update(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}")
            memory = record.get("cuda_max_allocated_bytes", record.get("rss_bytes"))
            if memory is not None:
                self._postfix["mem"] = f"{memory / 2**30:.1f}G"
            self.bar.set_postfix(self._postfix, refresh=False)
        elif event == "eval":
            metrics = record.get("metrics") or {}
            if "f1_weighted" in metrics:
                self._postfix["eval_f1w"] = f"{metrics['f1_weighted']:.4f}"
                self.bar.set_postfix(self._postfix)
        elif event == "save_error":
            # The C++ log says it too, but a bar redraw can hide a log line in a notebook cell.
            self.bar.write(f"checkpoint not saved at step {record.get('step')}: {record.get('error', record)}",
                           file=sys.stderr)

    def _begin(self, record: Dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.close()
        self.last_step = record["step"]
        desc = f"training (resumed at step {record['step']})" if record.get("resumed") else "training"
        self.bar = tqdm(total=max(0, record["total_steps"] - record["step"]), desc=desc, unit="step")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
