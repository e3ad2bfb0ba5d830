"""Checkpoints from Python, behind ``enstack ckpt``: list, inspect, verify, export and import.

``tools`` lists a run's checkpoints, inspects and exports one; ``verify`` checks one
byte by byte; ``importer`` writes a Hugging Face-style checkpoint as the first
checkpoint of a run. The checkpoint format itself is C++ (``enstack._C.ckpt``).
"""

from __future__ import annotations

from enstack.ckpt.importer import hf_decay_parameter_names, import_checkpoint
from enstack.ckpt.tools import export, format_inspect, format_list, inspect, list_run, resume_candidate
from enstack.ckpt.verify import check_files, read_safetensors, verify

__all__ = [
    "check_files",
    "export",
    "format_inspect",
    "format_list",
    "hf_decay_parameter_names",
    "import_checkpoint",
    "inspect",
    "list_run",
    "read_safetensors",
    "resume_candidate",
    "verify",
]
