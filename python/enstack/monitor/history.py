"""The training log of a run as JSON lines: ``<output_dir>/metrics/train-log.jsonl``.

The native loop hands Python one ``log`` record every ``logging_steps``; ``TrainLog``
appends each to the file so that training curves can be drawn for the whole run,
across disconnects and resumes, without reading TensorBoard's event files back. A
resumed run first drops the lines after the step it resumes from (the orphans of the
lost session), so every step appears once. Evaluations are not repeated here: the
C++ loop writes each one to ``metrics/eval-step-N.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["TrainLog", "read_train_log", "read_evals"]

FILE_NAME = "train-log.jsonl"
_EVAL_FILE = re.compile(r"^eval-step-(\d+)\.json$")


class TrainLog:
    """A record handler appending ``log`` records to ``metrics_dir/train-log.jsonl``."""

    def __init__(self, metrics_dir):
        self.path = Path(metrics_dir) / FILE_NAME
        self._file = None

    def __call__(self, record: Dict[str, Any]) -> None:
        event = record.get("event")
        if event == "begin":
            self._open(int(record["step"]) if record.get("resumed") else 0)
        elif event == "log" and self._file is not None:
            self._file.write(json.dumps({k: v for k, v in record.items() if k != "event"}) + "\n")
            self._file.flush()
        elif event == "end":
            self.close()

    def _open(self, keep_up_to: int) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_train_log(self.path) if r.get("step", 0) <= keep_up_to] if keep_up_to else []
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)  # a crash mid-rewrite keeps the old file, never half of it
        self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_train_log(path) -> List[Dict[str, Any]]:
    """The records of a train-log.jsonl (a file or a metrics directory); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the process died while writing this line
    return records


def read_evals(metrics_dir, max_step: Optional[int] = None) -> List[Dict[str, Any]]:
    """The eval-step-N.json metrics of a run, by step (up to ``max_step`` when given)."""
    found = []
    directory = Path(metrics_dir)
    if not directory.is_dir():
        return []
    for entry in directory.iterdir():
        match = _EVAL_FILE.match(entry.name)
        if not match or (max_step is not None and int(match.group(1)) > max_step):
            continue
        try:
            metrics = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        metrics.setdefault("step", int(match.group(1)))
        found.append(metrics)
    return sorted(found, key=lambda m: m["step"])
