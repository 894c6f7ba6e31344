"""How many threads the compute libraries use, and how their idle threads wait.

PyTorch's intra-op pool, its inter-op pool, and the BLAS and OpenMP pools of numpy, SciPy and
scikit-learn each start one thread per CPU they see. On a machine that other processes keep busy,
those threads fight for the same cores, and an OpenMP thread that waits for its siblings spins on
its core instead of handing it back: a smoke training step took several times longer with the
default pools than with one thread. One setting, ``threads`` in ``params.yaml`` (``--threads`` on
the command line, ``threads=`` in :meth:`~diffsketch.extractor.api.SketchExtractor.load`), sizes all
of them:

- ``auto``: ``OMP_NUM_THREADS`` when that is set in the environment; else the cores this process
  may use (:func:`available_cores`: its CPU affinity and the cgroup CPU quota of a container), less
  the cores other processes keep busy when the setting is applied (:func:`busy_elsewhere`), at
  least one; and all of its cores again when other processes keep every core busy;
- a number: that many threads.

Why leave the busy cores: a parallel region ends when its slowest thread does, and a thread that
shares a core with a busy process waits for its turn at every one of the thousands of small
operations of a step. Next to one busy process on two cores, a smoke training step took 1.8 times
as long with two threads as with one (``benchmarks/contention.py``, docs/performance.md). Why take
every core on a crowded machine: there the scheduler shares CPU time per thread, so one thread gets
less of it than two (46.6 s against 29.2 s per step with a dozen busy processes on two cores).

:func:`apply_threads` applies it: ``torch.set_num_threads``, the inter-op pool (when no inter-op
work has started yet), ``threadpoolctl`` for the BLAS and OpenMP libraries already loaded, and the
``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` environment for libraries
loaded later and for child processes.

How idle threads wait is read by the OpenMP runtime once, when it is loaded with torch, so it
cannot be changed afterwards: :func:`sleep_when_idle` sets ``OMP_WAIT_POLICY=PASSIVE`` (GNU
OpenMP: a waiting thread sleeps at once) and ``KMP_BLOCKTIME=0`` (Intel OpenMP: the same) unless
they are set already, and the command line calls it before anything imports torch. In a Python
program, call it (or set the two variables) before ``import torch``.

The thread count is in no result key: results agree across counts up to float rounding (forward
convolutions and matrix products give the same bits for any count, but a long reduction, or a
convolution's backward pass, sums in an order the threads set). A rerun is bit-identical to an
earlier run with the same count; set a number where the machine's load may change ``auto``'s.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
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


def _running(stat: str) -> int | None:
    r"""``procs_running`` of a ``/proc/stat`` text: the runnable threads of the whole machine.

    Example:
        >>> _running("cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n"), _running("")
        (3, None)
    """
    for line in stat.splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return None


def busy_elsewhere(samples: int = 9, interval: float = 0.025) -> int:
    """How many cores other processes keep busy now: the machine's runnable threads (``/proc/stat``),
    less the one reading them. A first reading of 0 is taken at once (a quiet machine costs no
    wait); otherwise the median of ``samples`` readings ``interval`` seconds apart. 0 when they
    cannot be read (not on Linux)."""
    readings = []
    for i in range(samples):
        running = _running(_read(Path("/proc/stat")))
        if running is None:
            return 0
        readings.append(max(0, running - 1))
        if readings == [0]:
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return sorted(readings)[len(readings) // 2]


def auto_threads(cores: int, machine_cores: int, busy: int) -> int:
    """``auto``'s count: the ``cores`` this process may use less those that ``busy`` other threads hold
    (of the machine's ``machine_cores``: the affinity may cover only some), at least 1; all ``cores``
    when the others keep every core of the machine busy (the scheduler then shares time per thread).

    Example:
        >>> auto_threads(2, 2, 0), auto_threads(2, 2, 1), auto_threads(2, 2, 2), auto_threads(2, 2, 12)
        (2, 1, 2, 2)
        >>> auto_threads(4, 16, 10), auto_threads(4, 16, 14), auto_threads(4, 16, 16)
        (4, 2, 4)
    """
    free = machine_cores - busy
    return cores if free < 1 else max(1, min(cores, free))


def resolve_threads(setting: Threads | str, root: Path = CGROUP_ROOT) -> int:
    """The number of threads a ``threads`` setting means (``auto``, a number, or a number as text).

    ``auto``: ``OMP_NUM_THREADS`` when that is set (at most the cores this process may use); else
    :func:`auto_threads` of the cores this process may use and those other processes keep busy now.

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
        if from_env.isdigit() and int(from_env) > 0:
            return min(cores, int(from_env))
        busy = busy_elsewhere()
        count = auto_threads(cores, max(cores, os.cpu_count() or cores), busy)
        if count < cores:
            log.info("threads: %d of the %d cores this process may use (other processes keep %d busy; threads: %d "
                     "or --threads %d uses them all)", count, cores, busy, cores, cores)  # fmt: skip
        return count
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
