"""C++ log records reach the `enstack` Python logger, and so a Jupyter cell."""

from __future__ import annotations

import logging

import nbformat
import pytest
from nbclient import NotebookClient

import enstack
from enstack import _C


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def collected():
    logger = logging.getLogger("enstack")
    handler = _Collect()
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    enstack.set_log_level("info")


def test_cpp_records_reach_the_python_logger_with_their_level(collected):
    _C.util.log("info", "loaded 3 shards")
    _C.util.log("warning", "mirror is slow")
    _C.util.log("debug", "hidden at info level")
    assert [(r.levelno, r.getMessage()) for r in collected] == [
        (logging.INFO, "loaded 3 shards"),
        (logging.WARNING, "mirror is slow"),
    ]
    assert all(r.name == "enstack" for r in collected)


def test_set_log_level_applies_to_cpp_records(collected):
    enstack.set_log_level("debug")
    _C.util.log("debug", "now visible")
    assert [r.getMessage() for r in collected] == ["now visible"]
    enstack.set_log_level("error")
    _C.util.log("warning", "filtered in C++")
    assert len(collected) == 1
    with pytest.raises(enstack.ConfigError):
        enstack.set_log_level("loud")


def test_records_from_cpp_threads_arrive(collected):
    _C._testing.log_from_thread("info", "from a loader thread")
    assert [r.getMessage() for r in collected] == ["from a loader thread"]


def test_model_loading_logs_through_python(collected, tmp_path):
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=16, max_position_embeddings=20)
    RobertaModel(config).save_pretrained(tmp_path)  # a base checkpoint: no classification head
    enstack.model.load(tmp_path, num_labels=5)
    assert any("initialised a new 5-label head" in r.getMessage() for r in collected)


def test_a_cpp_log_line_shows_in_a_jupyter_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import enstack"),
        nbformat.v4.new_code_cell("enstack._C.util.log('info', 'hello from the C++ core')"),
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[1].outputs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "hello from the C++ core" in text, outputs
