"""Data-parallel training on ``torch.distributed``: one process per GPU (or CPU worker),
launched by ``torchrun``.

``torchrun --nproc_per_node N -m enstack train CONFIG`` and ``enstack.Trainer(cfg).fit()``
inside a torchrun-launched script both end here: the default process group is
initialised from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), or reused when the script created it, and handed to the C++ trainer,
which all-reduces gradients through c10d (NCCL on GPUs, Gloo on CPUs; ``run.dist_backend``
overrides). ``train.batch_size`` is the global batch; each rank runs its share of every
global batch, so a run resumes exactly on any number of ranks that divides it. Rank 0
alone writes checkpoints, logs, TensorBoard, plots and metrics files.

A rank that fails records why in the rendezvous store; the others stop at their next
collective with a ``enstack.DistributedError`` naming it (and after
``run.dist_timeout_seconds`` at the latest).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

log = logging.getLogger("enstack")

__all__ = ["Group", "setup", "launched"]

#: Keys the trainer's failure reports use live under this prefix of the rendezvous store.
STORE_PREFIX = "enstack"


@dataclass(frozen=True)
class Group:
    """The process group a trainer runs data-parallel in."""

    process_group: Any  # torch.distributed.ProcessGroup
    store: Any  # torch.distributed.Store or None
    rank: int
    world_size: int
    local_rank: int
    timeout_seconds: float

    @property
    def is_writer(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and plots."""
        return self.rank == 0

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.process_group)


def launched() -> bool:
    """True in a process that torchrun (or a script's own init_process_group) made one of several."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def device_for(device: str, local_rank: int) -> str:
    """One GPU per process: ``cuda`` becomes ``cuda:<LOCAL_RANK>`` (an explicit ``cuda:N`` stays)."""
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def setup(cfg, device: str) -> Optional[Group]:
    """The process group for a run, or None for one process.

    Initialises the default group from torchrun's environment unless the script did; the
    backend is ``run.dist_backend``, else NCCL for CUDA and Gloo for CPU.
    """
    if not launched():
        return None
    import torch.distributed as dist

    from enstack._C import ConfigError

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process, or install a torch "
                          "with distributed support.")
    timeout = float(cfg.run.dist_timeout_seconds)
    if not dist.is_initialized():
        backend = cfg.run.dist_backend or ("nccl" if device.startswith("cuda") else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        log.debug("initialised the %s process group (rank %d of %d)", backend, dist.get_rank(),
                  dist.get_world_size())
    store = None
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address and port:
        try:
            client = dist.TCPStore(address, int(port), is_master=False,
                                   timeout=datetime.timedelta(seconds=timeout))
            store = dist.PrefixStore(STORE_PREFIX, client)
        except Exception as e:  # noqa: BLE001 - without it, failures are noticed by the timeout only
            log.warning("cannot reach the rendezvous store at %s:%s (%s); a failing rank ends the others "
                        "only after run.dist_timeout_seconds (%s s)", address, port, e, timeout)
    if dist.get_rank() != 0:  # rank 0 alone logs (and writes); the others report warnings and errors
        from enstack._logging import set_log_level

        set_log_level("warning")
    return Group(process_group=dist.group.WORLD, store=store, rank=dist.get_rank(),
                 world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                 timeout_seconds=timeout)
