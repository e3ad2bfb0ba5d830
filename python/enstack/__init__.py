"""enstack: fine-tune code models (CodeBERT, GraphCodeBERT, UniXcoder) to classify
C/C++ functions by vulnerability class, and stack their predictions (EnStack).

The heavy lifting is C++ on LibTorch (``enstack._C``); this package orchestrates.
"""

from __future__ import annotations

# torch first: it loads the LibTorch shared libraries that enstack._C links against.
import torch

from enstack._version import __version__


def _check_torch_version() -> None:
    try:
        from enstack import _build_info
    except ImportError as e:  # pragma: no cover - a source tree without a build
        raise ImportError(
            "enstack's compiled core is missing. Build it with "
            "`pip install --no-build-isolation -e .` (or `make setup`) in the source tree."
        ) from e
    # The whole version, local label included: 2.13.0+cu130 and 2.13.0+cpu are different
    # libraries (a module built against the first looks for libtorch_cuda.so).
    if _build_info.torch_version != torch.__version__:
        raise ImportError(
            f"enstack was compiled against torch {_build_info.torch_version} but torch "
            f"{torch.__version__} is installed. The C++ core must be rebuilt for this torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps enstack` "
            "(or `pip install --no-build-isolation -e .` in a source tree; in Colab, "
            "enstack.colab.install() keeps one wheel per torch build on Drive)."
        )


_check_torch_version()

from enstack import _C  # noqa: E402
from enstack import _logging  # noqa: E402
# The public subpackages and modules; monitor.plots and monitor.tensorboard are imported on use
# (matplotlib and tensorboard are slow to import).
from enstack import ckpt, colab, config, data, distributed, hub, model, monitor  # noqa: E402
from enstack.config import Config, load_config  # noqa: E402
from enstack.trainer import FitResult, Prepared, Trainer  # noqa: E402
from enstack import stacking  # noqa: E402
from enstack.stacking import stack  # noqa: E402
from enstack._C import CheckpointError, ConfigError, DataError, DistributedError, Error, ModelError  # noqa: E402
from enstack._C.train import Terminated  # noqa: E402
from enstack._logging import set_log_level  # noqa: E402

for _exc in (Error, ConfigError, DataError, CheckpointError, ModelError, DistributedError, Terminated):
    _exc.__module__ = "enstack"

_logging.install()

# One rule: __all__ names (1) the subpackages and modules a user calls into, each imported by
# `import enstack` (ckpt, colab, config, data, distributed, hub, model, monitor, stacking), and (2) the few names
# most programs need without another import: the config, the Trainer and what it returns, the
# stacking entry point, the log level and the exceptions. Everything else is reached through its
# module (e.g. enstack.config.trainer_options, enstack.stacking.load_stack_config). Not exported:
# underscored modules, `cli` (the `enstack` command) and the modules whose public names are
# re-exported here (`trainer`) or that serve the package itself (`files`, `wheelcache`).
__all__ = [
    # modules
    "ckpt",
    "colab",
    "config",
    "data",
    "distributed",
    "hub",
    "model",
    "monitor",
    "stacking",
    # names
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "DistributedError",
    "Error",
    "FitResult",
    "ModelError",
    "Prepared",
    "Terminated",
    "Trainer",
    "__version__",
    "load_config",
    "set_log_level",
    "stack",
]
