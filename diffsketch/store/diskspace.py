"""Disk space: the projected size of a store, checked before `sample` and `pairs` start and recorded
when they finish, and a clean stop when the disk fills up during a run.

The projection counts what the filesystem allocates (what ``du`` reports), from the store's layout:

- every file one entry (trajectory or pair) writes: one chunk (or shard) file per array with a row
  per entry, and its completion flag, each rounded up to whole blocks of the target filesystem;
- the folders an entry's files live in (zarr's chunk keys nest one folder per index, so a
  trajectory's shard of a layer sits 5 folders deep), at the size a folder takes on that filesystem
  (measured on a probe folder: a block on ext4, nothing on tmpfs);
- once for the store: the metadata (``zarr.json`` of every array and group; the root's holds all of
  them, consolidated), the arrays written once (seeds, labels, timesteps, ...) and the shared folders.

The bytes of an entry's chunk files are measured on a sample of written entries
(:data:`MEASURED_ENTRIES` of them, spread over the store) where the store holds any and is local;
a new store is projected with its chunks uncompressed (an upper bound: features of random weights do
not compress at all and real ones only somewhat, docs/performance.md). A finished `sample` or
`pairs` run records the projection of the whole store, measured on its own chunks (a local one's),
in the store's attribute ``projected_bytes``. The free space is that of the filesystem holding the store (its
nearest existing folder); a store the run replaces counts as free. Remote stores (``s3://`` ...)
are not checked and count their files' bytes alone.

A write that fails for want of space (``ENOSPC``, or ``EDQUOT`` for a full quota) stops the run
with :class:`DiskFullError`. Every entry is marked complete only after all its arrays are written
(and zarr writes each chunk to a temporary file first), so the store stays resumable: after
freeing space the same command finishes it.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


MEASURED_ENTRIES = 16  # written entries whose chunk files are measured (spread over the store)
METADATA_BYTES = 1500  # bytes of one array's zarr.json, for a store not written yet


def allocated(size: int, block: int) -> int:
    """Bytes a file of ``size`` bytes takes on a filesystem of ``block``-byte blocks.

    Example:
        >>> allocated(0, 4096), allocated(1, 4096), allocated(4097, 4096)
        (0, 4096, 8192)
    """
    return -(-size // block) * block


@dataclass(frozen=True)
class Filesystem:
    """What the filesystem holding a store allocates: files in ``block``-byte blocks, ``folder`` bytes
    a folder (1 and 0 for a remote store: its objects' bytes alone)."""

    block: int = 1
    folder: int = 0

    @classmethod
    def of(cls, path: str | Path) -> Filesystem:
        """The filesystem the store at ``path`` (local, or remote) is or would be written to."""
        loc = store.location(path)
        if isinstance(loc, str):
            return cls()
        parent = store.existing_parent(loc)
        stats = os.statvfs(parent)
        block = stats.f_frsize or stats.f_bsize or 4096
        try:  # a folder's own size: one block on ext4, none on tmpfs
            probe = tempfile.mkdtemp(prefix=".diffsketch-probe-", dir=parent)
            folder = os.stat(probe).st_blocks * 512
            os.rmdir(probe)
        except OSError:
            folder = block
        return cls(block, folder)


def _folders(keys: list[str], below: str) -> set[str]:
    """The folders holding ``keys`` (store keys, ``/``-separated) at or below the folder ``below``."""
    out = set()
    for key in keys:
        parts = key.split("/")[:-1]
        for depth in range(len(parts)):
            folder = "/".join(parts[: depth + 1])
            if folder.startswith(below):
                out.add(folder)
    return out


def _is_row(array: zarr.Array) -> bool:
    return (array.shards or array.chunks)[0] == 1


def _raw_file_bytes(array: zarr.Array) -> int:
    """Bytes of one uncompressed chunk (or shard) file of ``array`` (a shard adds its index)."""
    outer = array.shards or array.chunks
    size = math.prod(outer) * array.dtype.itemsize
    if array.shards:
        size += 16 * math.prod(s // c for s, c in zip(array.shards, array.chunks)) + 4  # the index and its CRC32C
    return size


@dataclass(frozen=True)
class Projection:
    """The projected size on disk of a store of ``entries`` entries, ``done`` of them already written."""

    entries: int
    done: int
    entry_bytes: int  # uncompressed bytes of one entry
    ratio: float | None  # file bytes per uncompressed byte, measured on written entries; None: not measured
    entry_allocated: float = 0.0  # bytes one entry takes: its files in whole blocks, and its folders
    fixed_bytes: int = 0  # bytes taken once: metadata, arrays written once, shared folders
    measured: int = 0  # entries whose files were measured
    entry_files: int = 0  # files of one entry
    entry_folders: int = 0  # folders of one entry
    block: int = 1  # the filesystem's block size

    @property
    def stored_entry_bytes(self) -> float:
        """Bytes on disk per entry."""
        return self.entry_allocated

    @property
    def total_bytes(self) -> int:
        return math.ceil(self.fixed_bytes + self.entries * self.entry_allocated)

    @property
    def remaining_bytes(self) -> int:
        return math.ceil((self.entries - self.done) * self.entry_allocated + (self.fixed_bytes if not self.done else 0))

    def basis(self) -> str:
        files = f"{self.entry_files} files in {self.entry_folders} folders each, {self.block}-byte blocks"
        if self.ratio is None:
            return f"{files}, chunks counted uncompressed"
        return f"{files}, chunk files measured on {self.measured} written: {self.ratio:.2f} bytes per uncompressed byte"

    def describe(self, what: str) -> str:
        return (
            f"projected size on disk {human_bytes(self.total_bytes)} ({self.entries} {what} x "
            f"{human_bytes(self.stored_entry_bytes)}, {self.basis()}; {human_bytes(self.fixed_bytes)} of metadata and "
            f"arrays written once); {human_bytes(self.remaining_bytes)} still to write"
        )


def chunk_bytes(path: Path) -> int:
    """Bytes of the chunk files of the local store at ``path`` (its ``zarr.json`` metadata left out)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def _size(folder: Path, key: str) -> int | None:
    try:
        return os.stat(folder / key).st_size
    except OSError:
        return None


def projected_size(path: str | Path, root: zarr.Group, done: int = 0, fs: Filesystem | None = None) -> Projection:
    """The size on disk of the store at ``path`` laid out as ``root`` (the store itself, or for a new
    one :func:`store.layout_template`), of which ``done`` entries are written (see the module
    docstring). Chunk files are measured where entries are written and the store is local (sizing a
    bucket lists every object). ``fs``: the filesystem's costs (measured at ``path`` when None)."""
    loc = store.location(path)
    fs = fs or Filesystem.of(loc)
    local = not isinstance(loc, str)
    n = root["complete"].shape[0]
    arrays = store.all_arrays(root)
    rows = [a for p, a in store.entry_arrays(root) if _is_row(a)] if n else []
    row_paths = {a.path for a in rows}
    # the files and folders of one entry (entry 0's; every entry has the same)
    row_keys = {a.path: store.chunk_keys(a, 0) for a in rows}
    entry_files = sum(len(k) for k in row_keys.values())
    entry_folders = sum(len(_folders(k, f"{a.path}/c/")) for a, k in zip(rows, row_keys.values()))
    # what is written once: metadata, the other arrays, the folders above the entries' own
    once = [a for _, a in arrays if a.path not in row_paths]
    groups = {p.rsplit("/", 1)[0] for p, _ in arrays if "/" in p}
    folders = 1 + len(groups) + 2 * len(arrays)  # the store, its groups, each array and its c/ folder
    folders += sum(len(_folders(store.chunk_keys(a), f"{a.path}/c/")) for a in once)
    written = local and done and store.is_group(loc)
    if written:
        files = [f"{a.path}/zarr.json" for _, a in arrays] + [f"{g}/zarr.json" for g in groups] + ["zarr.json"]
        files += [k for a in once for k in store.chunk_keys(a)]
        fixed = sum(allocated(_size(loc, k) or 0, fs.block) for k in files)
    else:
        metadata = len(groups) * allocated(100, fs.block) + len(arrays) * allocated(METADATA_BYTES, fs.block)
        metadata += allocated((len(arrays) + 1) * METADATA_BYTES, fs.block)  # the root's, all of them consolidated
        fixed = metadata + sum(allocated(_raw_file_bytes(a), fs.block) for a in once for _ in store.chunk_keys(a))
    fixed += folders * fs.folder
    raw = entry_bytes(root)
    ratio, measured = None, 0
    per_entry = sum(allocated(_raw_file_bytes(a), fs.block) * len(row_keys[a.path]) for a in rows)
    if written:
        complete = np.flatnonzero(store.complete_mask(root))
        spread = np.linspace(0, len(complete) - 1, min(MEASURED_ENTRIES, len(complete))).astype(int)
        sample = complete[np.unique(spread)]
        stored = allocated_total = 0
        for entry in sample.tolist():
            for a in rows:
                for key in store.chunk_keys(a, entry):
                    size = _size(loc, key) or 0
                    stored += size
                    allocated_total += allocated(size, fs.block)
        if len(sample):
            measured = len(sample)
            ratio = stored / (measured * raw) if raw else None
            per_entry = allocated_total / measured
    entry_allocated = per_entry + entry_folders * fs.folder
    return Projection(n, done, raw, ratio, entry_allocated, int(fixed), measured, entry_files, entry_folders, fs.block)


def record_projection(root: zarr.Group, path: str | Path, what: str) -> Projection:
    """Project the finished store at ``path`` from its own chunks and record the total in its attribute
    ``projected_bytes`` (process 0, before :func:`store.finalize`; a remote store: its objects' bytes)."""
    done = int(store.complete_mask(root).sum())
    projection = projected_size(path, root, done)
    root.attrs["projected_bytes"] = projection.total_bytes
    log.info("%s: %s", store.location(path), projection.describe(what))
    return projection


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
