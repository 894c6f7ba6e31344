"""Disk space: the projected size of a store, checked before `sample` and `pairs` start, and a clean
stop when the disk fills up during a run.

The projection starts from the store's layout: the uncompressed bytes of one entry (trajectory or
pair) are the items of every array with a row per entry times their dtype's size
(:func:`entry_bytes`). Where the store already holds completed entries (a resumed run) this is
scaled by the compression measured on it (the bytes of its chunk files over the uncompressed
bytes of its completed entries; metadata, a few kB per array, is left out of both). A new store is projected uncompressed: features of random weights do not
compress at all (docs/performance.md) and real ones only somewhat, so the estimate errs on the
large side. The free space is that of the filesystem holding the store (its nearest existing
folder); a store the run replaces counts as free. Remote stores (``s3://`` ...) are not checked.

A write that fails for want of space (``ENOSPC``, or ``EDQUOT`` for a full quota) stops the run
with :class:`DiskFullError`. Every entry is marked complete only after all its arrays are written
(and zarr writes each chunk to a temporary file first), so the store stays resumable: after
freeing space the same command finishes it.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zarr

from diffsketch.store import zarr_store as store

log = logging.getLogger(__name__)

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)  # the errnos of a write that found no space


class DiskSpaceError(store.StoreError):
    """Too little free space for the projected store; the message gives the numbers and the fixes."""


class DiskFullError(store.StoreError):
    """The disk filled up during a run; what was written is kept, and rerunning resumes."""


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units: ``812 bytes``, ``3.9 MB``, ``61.2 GB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def entry_bytes(root: zarr.Group) -> int:
    """Uncompressed bytes of one entry: over every array with a row per entry, the items of one row
    times the dtype's size."""
    return sum(math.prod(a.shape[1:]) * a.dtype.itemsize for _, a in store.entry_arrays(root))


@dataclass(frozen=True)
class Projection:
    """The projected size of a store of ``entries`` entries, ``done`` of them already written."""

    entries: int
    done: int
    entry_bytes: int  # uncompressed bytes of one entry
    ratio: float | None  # bytes on disk per uncompressed byte, measured on the done entries; None: not measured

    @property
    def stored_entry_bytes(self) -> float:
        return self.entry_bytes * (self.ratio if self.ratio is not None else 1.0)

    @property
    def total_bytes(self) -> int:
        return math.ceil(self.entries * self.stored_entry_bytes)

    @property
    def remaining_bytes(self) -> int:
        return math.ceil((self.entries - self.done) * self.stored_entry_bytes)

    def basis(self) -> str:
        if self.ratio is None:
            return "uncompressed"
        return f"at the {1 / self.ratio:.2f}x compression measured on the {self.done} written"

    def describe(self, what: str) -> str:
        return (
            f"projected size {human_bytes(self.total_bytes)} ({self.entries} {what} x "
            f"{human_bytes(self.stored_entry_bytes)}, {self.basis()}); {human_bytes(self.remaining_bytes)} still to write"
        )


def chunk_bytes(path: Path) -> int:
    """Bytes of the chunk files of the local store at ``path`` (its ``zarr.json`` metadata left out)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def projected_size(path: str | Path, root: zarr.Group, done: int = 0) -> Projection:
    """The size of the store at ``path`` laid out as ``root`` (the store itself, or for a new one
    :func:`store.layout_template`), of which ``done`` entries are written. The compression is
    measured where entries are written and the store is local (sizing a bucket lists every object)."""
    per_entry = entry_bytes(root)
    loc = store.location(path)
    ratio = chunk_bytes(loc) / (done * per_entry) if done and per_entry and not isinstance(loc, str) else None
    return Projection(root["complete"].shape[0], done, per_entry, ratio)


def check_space(
    path: str | Path, projection: Projection, what: str, fixes: str, force: bool = False, replacing: bool = False
) -> None:
    """Log the projected size; refuse (:class:`DiskSpaceError`) when the disk holding the local store
    ``path`` has less free space than is still to write, unless ``force``.

    Args:
        what: the entries, for the messages (``trajectories``, ``pairs``).
        fixes: the params that make the store smaller, for the message.
        replacing: the run deletes the store now at ``path`` first (its space counts as free).
    """
    loc = store.location(path)
    log.info("%s: %s", loc, projection.describe(what))
    if isinstance(loc, str):
        log.info("%s is remote: free space is not checked", loc)
        return
    folder = store.existing_parent(loc)
    free = shutil.disk_usage(folder).free
    reclaimed = store.disk_bytes(loc) if replacing and loc.exists() else 0
    need = projection.remaining_bytes
    if need <= free + reclaimed:
        return
    counted = f" (counting the {human_bytes(reclaimed)} of the store this run replaces)" if reclaimed else ""
    message = (
        f"not enough free space for {loc}: {projection.entries - projection.done} {what} still to write need about "
        f"{human_bytes(need)} ({human_bytes(projection.stored_entry_bytes)} each, {projection.basis()}), but {folder} has "
        f"{human_bytes(free + reclaimed)} free{counted}. Make the store smaller ({fixes}), free space, or write it to "
        "another disk or a bucket (--out /other/disk/... or s3://bucket/...); or pass --force to start anyway"
    )
    if force:
        log.warning("%s (--force: starting anyway)", message)
        return
    raise DiskSpaceError(message)


@contextmanager
def stop_when_full(path: str | Path, what: str):
    """Turn a write that found the disk full (:data:`FULL_DISK`) into a :class:`DiskFullError`
    naming the store and the free space."""
    try:
        yield
    except OSError as err:
        if err.errno not in FULL_DISK:
            raise
        loc = store.location(path)
        free = "" if isinstance(loc, str) else f", {human_bytes(shutil.disk_usage(store.existing_parent(loc)).free)} free"
        raise DiskFullError(
            f"{loc}: the disk is full{free}: writing {what} failed ({err.strerror}). The {what} completed so far are "
            "kept: free space (or move the store to a larger disk or a bucket), then rerun the same command; it "
            "resumes where it stopped"
        ) from None
