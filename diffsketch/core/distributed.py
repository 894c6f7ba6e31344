"""Splitting `sample` and `pairs` across processes started by `accelerate launch` or `torchrun`.

The same command runs in one process or in N: a launcher sets ``WORLD_SIZE`` / ``RANK`` /
``LOCAL_RANK`` in each process's environment, and :func:`workers` then joins accelerate's process
group (gloo on CPU, NCCL on GPUs; each process gets its own GPU). Work is split in whole blocks of
the fixed batch plan (so every trajectory is computed exactly as a single process would, from
seeds that depend only on its global index), each process writes only its own trajectories (one
shard or chunk each, never shared), and process 0 alone creates and finalises the store, with
barriers around it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Workers:
    """This process's place among the workers (rank 0 of 1 when not launched by a launcher)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # the device a multi-process launch assigns to this process
    _state: object | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (a no-op in a single process)."""
        if self._state is not None:
            self._state.wait_for_everyone()

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of ``items``: the first ``len % world`` ranks get one more."""
        base, extra = divmod(len(items), self.world)
        start = self.rank * base + min(self.rank, extra)
        return list(items[start : start + base + (self.rank < extra)])


def launched() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def workers(device: str = "auto") -> Workers:
    """Join the launcher's process group, or a single-process :class:`Workers` when not launched.

    Args:
        device: ``model.device``. ``cpu`` (or ``auto`` without CUDA) uses gloo; otherwise each
            process takes the GPU of its local rank.
    """
    if not launched():
        return Workers()
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    log.info("worker process %d of %d on %s", state.process_index, state.num_processes, state.device)
    return Workers(rank=state.process_index, world=state.num_processes, device=state.device, _state=state)


def assign_device(params, workers: Workers):
    """``params`` with ``model.device`` set to this process's GPU when a launch spread the work over GPUs."""
    if workers.world > 1 and workers.device is not None and workers.device.type != "cpu":
        return params.model_copy(update={"model": params.model.model_copy(update={"device": str(workers.device)})})
    return params


def launch_command(processes: int, args: list[str], script: list[str]) -> list[str]:
    """The torchrun command that runs ``script`` (a file and its arguments) in ``processes`` workers."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *args, *script]


def relaunch(processes: int, args: list[str], script: list[str]) -> int | None:
    """Run ``script`` again under torchrun when ``processes`` > 1 and this is not already a worker.

    Returns:
        The launcher's exit code, or None when the caller should do the work itself.
    """
    if processes <= 1 or launched():
        return None
    return subprocess.run(launch_command(processes, args, script)).returncode
