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

The probe measures the peak of *reserved* memory (what the caching allocator holds, fragmentation
included), not of allocated memory. Should a batch still run out of memory, :class:`Halving`
recovers: the work that failed is redone in halves (logged once per halving, cached memory freed
first), and later batches keep the smaller size. Items keep their own seeds, so the results are
those of the full batch up to float rounding.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import TypeVar

import torch

from diffsketch.core.errors import DiffsketchError

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
    """Peak GPU bytes that ``run(batch)`` makes the caching allocator reserve above what it reserved
    before (reserved, not allocated: blocks lost to fragmentation count, as they do when memory runs out)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_reserved(device)
    run(batch)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_reserved(device) - before


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
    total)`` bytes) default to the CUDA allocator's figures (peak reserved memory, :func:`measure_peak`).
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


class OutOfMemoryError(DiffsketchError, RuntimeError):
    """The work runs out of memory even one item at a time; the message names the fix."""


def free_cached_memory(device: torch.device | str) -> None:
    """Drop unreachable tensors and hand the allocator's cached blocks back (CUDA)."""
    gc.collect()
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


T = TypeVar("T")
R = TypeVar("R")


class Halving:
    """Out-of-memory recovery: the work that runs out of memory is redone at half the batch.

    ``batch`` is the largest piece of work tried at once; an out-of-memory error
    (``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError`` is) halves it, logs one
    warning, frees cached memory and redoes the piece that failed. Later work keeps the smaller
    size. Running out of memory at batch 1 raises :class:`OutOfMemoryError`.

    >>> halving = Halving(4, "cpu", "demo")
    >>> def work(chunk):  # runs out of memory above 2 items
    ...     if len(chunk) > 2:
    ...         raise torch.OutOfMemoryError("CUDA out of memory")
    ...     return sum(chunk)
    >>> [(chunk, total) for chunk, total in halving.chunks([1, 2, 3, 4, 5], work)]
    [([1, 2], 3), ([3, 4], 7), ([5], 5)]
    >>> halving.batch, halving.halvings
    (2, 1)
    """

    def __init__(self, batch: int, device: torch.device | str, what: str):
        self.batch = max(1, int(batch))
        self.device = torch.device(device)
        self.what = what
        self.halvings = 0

    def _halve(self, failed: int) -> None:
        if failed <= 1:
            raise OutOfMemoryError(
                f"{self.what}: out of memory on {self.device} even for one item; free the GPU (other processes), "
                "lower the resolution or use a smaller model.dtype"
            )
        self.batch = max(1, failed // 2)
        self.halvings += 1
        log.warning("%s: out of memory at batch %d on %s; redoing that work at batch %d", self.what, failed, self.device, self.batch)
        free_cached_memory(self.device)

    def chunks(self, items: Sequence[T], work: Callable[[list[T]], R]) -> Iterator[tuple[list[T], R]]:
        """``(chunk, work(chunk))`` over consecutive chunks of ``items`` (at most :attr:`batch` each, in
        order), lazily: a chunk that runs out of memory is redone in halves."""
        items, start = list(items), 0
        while start < len(items):
            chunk = items[start : start + self.batch]
            try:
                result = work(chunk)
            except torch.OutOfMemoryError:
                failed = len(chunk)  # handled outside the except block, once the error's frames are released
            else:
                start += len(chunk)
                yield chunk, result
                continue
            self._halve(failed)

    def run(self, work: Callable[[int], R]) -> R:
        """``work(batch)``, where ``work`` does all its job in pieces of at most ``batch`` items (e.g.
        micro-batches whose gradients add up); redone with half the pieces' size after an out-of-memory error."""
        while True:
            size = self.batch
            try:
                return work(size)
            except torch.OutOfMemoryError:
                pass
            self._halve(size)


def micro_batches(total: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``.

    >>> micro_batches(5, 2)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    size = max(1, size)
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]
