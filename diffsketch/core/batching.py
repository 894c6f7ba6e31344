"""``batch_size: auto`` for `sample` and `pairs`: the largest batch that fits the GPU's free memory.

The probe runs the stage's own batch function (the same denoising loop, capture and decode, one
DDIM step) at batch 1 and 2 and measures the peak of allocated GPU memory of each, which gives a
fixed cost and a cost per item; memory that accumulates over the remaining steps (features kept on
the GPU) is added per item from the layer table. The batch is then the largest that keeps the
projected peak within ``MARGIN`` of the free memory, at most the number of items to do and at
most ``MAX_BATCH``. On a CPU (no free-memory figure to trust, and throughput flat in the batch),
``auto`` is :data:`CPU_DEFAULT`.

Results do not depend on the batch (per-item seeds and noise, the empty prompt encoded once;
tested up to float tolerance), but a batch plan is recorded in the store so a resumed run
denoises exactly the batches of the uninterrupted one (bit-identical).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext

import torch

log = logging.getLogger(__name__)

CPU_DEFAULT = 4  # `auto` on a CPU (the old default batch)
MARGIN = 0.85  # share of the free GPU memory the projected peak may use
MAX_BATCH = 256


def fit_batch(fixed: float, per_item: float, free: float, cap: int, margin: float = MARGIN) -> int:
    """The largest batch b with ``fixed + b * per_item <= margin * free``, in [1, min(cap, MAX_BATCH)]."""
    if per_item <= 0:
        return max(1, min(cap, MAX_BATCH))
    fits = int((margin * free - fixed) // per_item)
    return max(1, min(fits, cap, MAX_BATCH))


def measure_peak(run: Callable[[int], None], batch: int, device: torch.device) -> int:
    """Peak GPU bytes that ``run(batch)`` allocates above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run(batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def probe_batch_size(
    run: Callable[[int], None],
    device: torch.device,
    cap: int,
    extra_per_item: int = 0,
    what: str = "batch",
    measure: Callable = measure_peak,
    free_memory: Callable | None = None,
) -> int:
    """Measure ``run`` at batch 1 and 2 on ``device`` (CUDA) and return the batch that fits.

    ``run(b)`` must do one batch of the stage's work at batch ``b``; ``extra_per_item`` is memory
    per item that the probe does not reach (features kept over the remaining steps). Compiled
    forwards run eagerly in the probe (eager needs at least the compiled graphs' memory, and the
    probe's shapes are not compiled for nothing). ``measure`` and ``free_memory`` (``(free,
    total)`` bytes) default to the CUDA allocator's figures.
    """
    stance = getattr(torch.compiler, "set_stance", None)
    with stance("force_eager") if stance is not None else nullcontext(), torch.no_grad():
        torch.cuda.empty_cache()
        one = measure(run, 1, device)
        two = measure(run, 2, device)
        torch.cuda.empty_cache()
    free, total = (free_memory or torch.cuda.mem_get_info)(device)
    per_item = max(two - one, 0) + extra_per_item
    fixed = max(one - (two - one), 0)
    batch = fit_batch(fixed, per_item, free, cap)
    log.info(
        "%s: auto = %d (probe: %.0f MB fixed + %.0f MB per item, %.0f of %.0f MB free, margin %.2f)",
        what, batch, fixed / 2**20, per_item / 2**20, free / 2**20, total / 2**20, MARGIN,
    )  # fmt: skip
    return batch


def resolve_batch_size(
    value: int | str, device: torch.device, run: Callable[[int], None], cap: int, extra_per_item: int = 0, what: str = "batch"
) -> int:
    """``batch_size`` as a number: itself, or for ``auto`` the probed batch on CUDA and
    :data:`CPU_DEFAULT` elsewhere."""
    if value != "auto":
        return int(value)
    if device.type != "cuda":
        return CPU_DEFAULT
    return probe_batch_size(run, device, max(1, cap), extra_per_item, what)
