"""How many threads the compute libraries use, and how their idle threads wait.

PyTorch's intra-op pool, its inter-op pool, and the BLAS and OpenMP pools of numpy, SciPy and
scikit-learn each start one thread per CPU they see. On a machine that other processes keep busy,
those threads fight for the same cores, and an OpenMP thread that waits for its siblings spins on
its core instead of handing it back: a smoke training step took several times longer with the
default pools than with one thread. One setting, ``threads`` in ``params.yaml`` (``--threads`` on
the command line, ``threads=`` in :meth:`~diffsketch.extractor.api.SketchExtractor.load`), sizes all
of them:

- ``auto``: the cores this process may use (:func:`available_cores`: its CPU affinity and the
  cgroup CPU quota of a container), or ``OMP_NUM_THREADS`` when that is set in the environment;
- a number: that many threads.

Cores that other processes keep busy are not left out: with idle threads asleep, ``auto`` came
within 1.15 of the best fixed count next to a busy process, and on a crowded machine the scheduler
shares CPU time per thread, so one thread got less of it than two (``benchmarks/contention.py``,
docs/performance.md).

:func:`apply_threads` applies it: ``torch.set_num_threads``, the inter-op pool (when no inter-op
work has started yet), ``threadpoolctl`` for the BLAS and OpenMP libraries already loaded, and the
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` environment for libraries
loaded later and for child processes.

How idle threads wait is read by the OpenMP runtime once, when it is loaded with torch, so it
cannot be changed afterwards: :func:`sleep_when_idle` sets ``OMP_WAIT_POLICY=PASSIVE`` (GNU
OpenMP: a waiting thread sleeps at once) and ``KMP_BLOCKTIME=0`` (Intel OpenMP: the same) unless
they are set already, and the command line calls it before anything imports torch. In a Python
program, call it (or set the two variables) before ``import torch``.

The thread count never changes a result's key: PyTorch's CPU kernels give the same numbers for any
count in the operations the tests check (convolutions, matrix products, reductions), and where a
reduction's split does change the last bits, no stored output depends on which count made it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Literal

from diffsketch.core.errors import DiffsketchError

log = logging.getLogger(__name__)

Threads = int | Literal["auto"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # idle OpenMP threads sleep instead of spinning
COUNT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class ThreadsError(DiffsketchError, ValueError):
    """A threads setting that is neither ``auto`` nor a whole number of at least 1."""


def _quota(text: str) -> float | None:
    """CPUs of a cgroup v2 ``cpu.max`` line (``quota period``); None for ``max`` (no limit) or a line it cannot read.

    Example:
        >>> _quota("150000 100000"), _quota("max 100000"), _quota("")
        (1.5, None, None)
    """
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroups(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """This process's cgroup v2 path and its v1 paths by controller, from ``/proc/self/cgroup``."""
    unified, v1 = None, {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            unified = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return unified, v1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``1.5`` = one and a half), or None when there is none.

    cgroup v2: the smallest ``cpu.max`` from the process's own cgroup up to the root of the
    hierarchy (a container usually sees its own cgroup as the root). cgroup v1:
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of the ``cpu`` controller.

    Args:
        root: where the cgroup filesystem is mounted.
        proc_cgroup: the text of ``/proc/self/cgroup`` (read when None).
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    unified, v1 = _own_cgroups(proc_cgroup)
    limits = []
    if (root / "cgroup.controllers").is_file() or (root / "cpu.max").is_file():  # cgroup v2
        folder = root / (unified or "/").lstrip("/")
        for candidate in [folder, *folder.parents]:
            limits.append(_quota(_read(candidate / "cpu.max")))
            if candidate == root:
                break
    else:  # cgroup v1: the cpu controller's folder, mounted as cpu,cpuacct or cpu
        for name in ("cpu,cpuacct", "cpu"):
            base = root / name
            if not base.is_dir():
                continue
            for folder in (base / v1.get("cpu", "/").lstrip("/"), base):
                quota = _read(folder / "cpu.cfs_quota_us").strip()
                period = _read(folder / "cpu.cfs_period_us").strip()
                if quota and period:
                    limits.append(_quota(f"{quota} {period}") if not quota.startswith("-") else None)
                    break
            break
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use: the CPUs of its affinity mask, at most its cgroup CPU quota (rounded down, at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def resolve_threads(setting: Threads | str, root: Path = CGROUP_ROOT) -> int:
    """The number of threads a ``threads`` setting means (``auto``, a number, or a number as text).

    ``auto``: the cores this process may use, at most ``OMP_NUM_THREADS`` when that is set.

    Raises:
        ThreadsError: the setting is neither ``auto`` nor a positive whole number.

    Example:
        >>> resolve_threads(3), resolve_threads("2")
        (3, 2)
        >>> resolve_threads("auto") >= 1
        True
    """
    if setting == "auto":
        from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
        cores = available_cores(root)
        return min(cores, int(from_env)) if from_env.isdigit() and int(from_env) > 0 else cores
    try:
        count = int(setting)
    except (TypeError, ValueError):
        count = 0
    if isinstance(setting, bool) or count < 1 or str(count) != str(setting).strip():
        raise ThreadsError(f"threads must be auto or a whole number of at least 1 (e.g. 2), not {setting!r}")
    return count


def sleep_when_idle() -> bool:
    """Make idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``).

    Variables already in the environment are kept. The OpenMP runtime reads them when it is loaded
    (with torch), so this only takes effect in a process that has not imported torch yet, and in
    the processes it starts. Returns whether torch was still unloaded.
    """
    for name, value in WAIT_POLICY.items():
        os.environ.setdefault(name, value)
    return "torch" not in sys.modules


def apply_threads(setting: Threads | str) -> int:
    """Size PyTorch's pools and the BLAS / OpenMP pools for ``setting``; returns the thread count.

    The intra-op pool (``torch.set_num_threads``), the inter-op pool (only while no inter-op work
    has started: PyTorch refuses to resize it later), the pools of the BLAS and OpenMP libraries
    already loaded (``threadpoolctl``), and the environment variables read by libraries loaded
    later and by child processes.

    Raises:
        ThreadsError: a setting that is neither ``auto`` nor a whole number of at least 1.
    """
    import numpy  # noqa: F401 - loads numpy's BLAS, so that threadpoolctl sizes it too
    import torch
    from threadpoolctl import threadpool_limits

    count = resolve_threads(setting)
    for name in COUNT_VARIABLES:
        os.environ[name] = str(count)
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # inter-op work has started: the pool keeps its size
            log.debug("the inter-op pool keeps %d threads (inter-op work has started)", torch.get_num_interop_threads())
    threadpool_limits(limits=count)
    log.debug("threads: %d (setting %s)", count, setting)
    return count
