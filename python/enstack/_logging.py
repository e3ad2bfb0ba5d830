"""Bridges the C++ core's log records to the ``enstack`` Python logger.

C++ records are forwarded to ``logging.getLogger("enstack")``. That logger gets
its own handler writing to the *current* ``sys.stderr`` (Jupyter and Colab
replace it per cell, so records show in the cell that caused them) and does not
propagate, unless the application has configured it already.
"""

from __future__ import annotations

import atexit
import logging
import sys

from enstack import _C

LOGGER_NAME = "enstack"
_FORMAT = "[enstack] %(levelname)s %(message)s"


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler that looks up sys.stderr at each record."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; the lookup wins
        pass


def install() -> None:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    _C.util.forward_logs_to_python(True)
    # Stop forwarding before the interpreter tears down; later records go to stderr.
    atexit.register(_C.util.forward_logs_to_python, False)


#: enstack's log levels, most verbose first: run.log_level, ``--log-level`` and ``set_log_level``
#: (the C++ core's names are the same).
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "off")
#: The levels as help texts list them: "trace, debug, ... or off".
LOG_LEVELS_TEXT = f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}"

# Python logging levels of LOG_LEVELS ("warn" is accepted for warning).
_LEVELS = dict(zip(LOG_LEVELS, (5, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                logging.CRITICAL + 10)), warn=logging.WARNING)


def set_log_level(level: str) -> None:
    """Sets the level of enstack's records, C++ and Python alike ("debug", "info", ...)."""
    name = level.lower()
    if name not in _LEVELS:
        raise _C.ConfigError(f"unknown log level {level!r}; use one of {', '.join(sorted(_LEVELS))}.")
    _C.util.set_log_level(name)
    logging.getLogger(LOGGER_NAME).setLevel(_LEVELS[name])
