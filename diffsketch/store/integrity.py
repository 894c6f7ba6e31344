"""Verify and repair a feature store or a pairs store (`diffsketch inspect --verify / --repair`).

:func:`verify` reads and decodes every chunk of every completed entry (trajectory or pair), and
lists each entry and array whose chunk is missing (a deleted file, a partial copy from a bucket) or
corrupt (its checksum or its decoding fails). Stores written with checksums (every chunk carries a
CRC32C, see :mod:`diffsketch.store.zarr_store`) find any changed or cut chunk; older ones are checked by
decoding alone, and read through zarrs where it can (local stores), which also catches a cut blosc
chunk. Chunks are written even when all zeros, so an absent chunk file always means damage (in
stores from before that, a chunk equal to the fill value, e.g. an all-black image, is reported
missing; redoing it is harmless). The arrays written once for the whole store (seeds, labels,
timesteps, ...) are checked too.

:func:`repair` clears the completion flag of the damaged entries, so that the next `sample` or
`pairs` run with the same settings redoes exactly them (and ends equal to an undamaged store).
Damage to a whole-store array cannot be redone entry by entry: the store must be made again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.core.sync import sync

from diffsketch.store import zarr_store as store

RERUN = {store.TRAJECTORY: "diffsketch sample", store.PAIR: "diffsketch pairs"}  # what redoes a cleared entry
PLURAL = {store.TRAJECTORY: "trajectories", store.PAIR: "pairs"}


@dataclass(frozen=True)
class Problem:
    """One missing or corrupt chunk: of ``entry`` (None: an array of the whole store) in ``array``."""

    entry: int | None
    array: str
    kind: str  # "missing" or "corrupt"
    detail: str


@dataclass
class Verification:
    """What :func:`verify` found in the store at ``path``."""

    path: str | Path
    kind: str  # what an entry is: "trajectory" or "pair"
    entries: int  # completed entries checked
    chunks: int  # chunks read and decoded
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> list[int]:
        """The damaged entries, which :func:`repair` clears."""
        return sorted({p.entry for p in self.problems if p.entry is not None})

    @property
    def whole_store(self) -> list[Problem]:
        """Damage to arrays of the whole store, which no rerun redoes."""
        return [p for p in self.problems if p.entry is None]

    @property
    def kinds(self) -> str:
        """What entries are, in the plural."""
        return PLURAL.get(self.kind, "entries")

    @property
    def rerun(self) -> str:
        """The command whose rerun redoes cleared entries."""
        return RERUN.get(self.kind, "diffsketch sample (or pairs)")


def _open(path: str | Path) -> tuple[zarr.Group, list[tuple[str, zarr.Array]]]:
    """The store and its arrays, opened under zarrs' codec pipeline (falling back by itself where a
    store is not local): it decodes in parallel and also rejects cut blosc chunks."""
    import zarrs  # noqa: F401 - registers its codec pipeline with zarr

    loc = store.location(path)
    if not store.is_group(loc):
        raise store.StoreError(f"{loc} is not a Zarr store (no zarr.json); check the path")
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        root = store.open_group(loc, mode="r")
        if "complete" not in root:
            raise store.StoreError(f"{loc} has no `complete` array: it is not a diffsketch feature or pairs store")
        return root, store.all_arrays(root)


async def _list(backend, prefix: str) -> set[str]:
    return {key async for key in backend.list_prefix(prefix)}


def _stored_keys(array: zarr.Array) -> set[str]:
    """The keys of every chunk (or shard) file of ``array`` that the store holds."""
    return sync(_list(array.store, f"{array.path}/"))


def _row_chunks(array: zarr.Array) -> int:
    """How many (inner) chunks hold one row of ``array``."""
    return math.prod(math.ceil(s / c) for s, c in zip(array.shape[1:], array.chunks[1:]))


def _entry_keys(array: zarr.Array, entry: int) -> list[str]:
    """The keys of the chunk (or shard) files holding row ``entry`` of a one-row-per-chunk array."""
    outer = array.shards or array.chunks
    grid = [range(math.ceil(s / c)) for s, c in zip(array.shape[1:], outer[1:])]
    return [f"{array.path}/{array.metadata.encode_chunk_key((entry, *rest))}" for rest in product(*grid)]


def _decode(array: zarr.Array, selection) -> str | None:
    """None when ``array[selection]`` reads and decodes, else what went wrong."""
    try:
        array[selection]
    except store.DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def _completion(complete: zarr.Array, problems: list[Problem]) -> np.ndarray:
    """The completion flags, read chunk by chunk: an entry whose flag cannot be read is a problem
    (and is checked as if complete, so that everything of it is listed)."""
    try:
        return np.asarray(complete[:], dtype=bool)
    except store.DECODE_ERRORS:
        pass
    flags = np.zeros(complete.shape[0], dtype=bool)
    for i in range(len(flags)):
        error = _decode(complete, i)
        if error is None:
            flags[i] = bool(complete[i])
        else:
            problems.append(Problem(i, "complete", "corrupt", error))
            flags[i] = True
    return flags


def verify(path: str | Path, progress: bool = False) -> Verification:
    """Read and decode every chunk of every completed entry, and every whole-store array, of the
    feature or pairs store at ``path`` (a local path or an fsspec URL)."""
    root, arrays = _open(path)
    problems: list[Problem] = []
    named = dict(arrays)
    complete = named.pop("complete")
    done = np.flatnonzero(_completion(complete, problems))
    per_entry = {p for p, _ in store.entry_arrays(root)}
    # written entry by entry (one row per chunk or shard); the rest (seeds, labels, timesteps,
    # coordinates) is written once for the whole store
    rows = {p: a for p, a in named.items() if p in per_entry and (a.shards or a.chunks)[0] == 1}
    chunks = 0
    for name, array in named.items():
        if name not in rows:
            chunks += array.nchunks
            if (error := _decode(array, ...)) is not None:
                problems.append(Problem(None, name, "corrupt", error))
    stored = {name: _stored_keys(array) for name, array in rows.items()}
    kind = store.entry_name(complete)
    for entry in tqdm(done.tolist(), desc=f"verifying {PLURAL.get(kind, 'entries')}", unit=kind, disable=not progress):
        chunks += 1  # its completion flag
        for name, array in rows.items():
            chunks += _row_chunks(array)
            missing = [k for k in _entry_keys(array, entry) if k not in stored[name]]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                problems.append(Problem(entry, name, "missing", f"no chunk file {missing[0]}{more}"))
            elif (error := _decode(array, entry)) is not None:
                problems.append(Problem(entry, name, "corrupt", error))
    problems.sort(key=lambda p: (-1 if p.entry is None else p.entry, p.array))
    return Verification(store.location(path), kind, len(done), chunks, problems)


def repair(result: Verification) -> list[int]:
    """Clear the completion flag of every damaged entry of a verified store; returns those entries.
    Whole-store damage (:attr:`Verification.whole_store`) is left: no rerun can redo it."""
    if result.damaged:
        complete = store.open_group(result.path, mode="r+")["complete"]
        for entry in result.damaged:
            complete[entry] = False  # a whole chunk: written without reading the (maybe damaged) old one
    return result.damaged
