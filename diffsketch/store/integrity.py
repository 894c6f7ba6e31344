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

The metadata is checked first: every ``zarr.json`` (the root's, each group's and each array's) must
parse as Zarr v3 metadata, and every array the root's consolidated metadata lists must have one.

:func:`repair` rebuilds damaged metadata from the copies every store keeps
(:func:`~diffsketch.store.zarr_store.protect_metadata`): an array's ``zarr.json`` from the root's
consolidated metadata, the root's from the copy of its attributes in the ``complete`` array, a
group's from nothing (it holds no attributes). It deletes every chunk (or shard) file of the damaged
entries, then clears their completion flag, so that the next `sample` or `pairs` run with the same
settings rewrites exactly them from scratch (and ends equal to an undamaged store) without reading
a damaged file. Damage to a whole-store array cannot be redone entry by entry: the store must be
made again (as must metadata with no copy left to rebuild it from).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync

from diffsketch.store import zarr_store as store

RERUN = {store.TRAJECTORY: "diffsketch sample", store.PAIR: "diffsketch pairs"}  # what redoes a cleared entry
PLURAL = {store.TRAJECTORY: "trajectories", store.PAIR: "pairs"}


@dataclass(frozen=True)
class Problem:
    """One missing or corrupt chunk: of ``entry`` (None: an array of the whole store) in ``array``."""

    entry: int | None
    array: str  # the array, or for metadata the document (``zarr.json``, ``unet/up0_res0/zarr.json``)
    kind: str  # "missing", "corrupt" or "metadata"
    detail: str


@dataclass
class Verification:
    """What :func:`verify` found in the store at ``path``."""

    path: str | Path
    kind: str  # what an entry is: "trajectory" or "pair"
    entries: int  # completed entries checked
    chunks: int  # chunks read and decoded
    problems: list[Problem] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)  # metadata documents :func:`repair` rebuilt

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def metadata(self) -> list[Problem]:
        """Damaged metadata documents (``zarr.json``)."""
        return [p for p in self.problems if p.kind == "metadata"]

    @property
    def unrebuilt(self) -> list[Problem]:
        """Damaged metadata that :func:`repair` had no copy to rebuild from (after a repair)."""
        return [p for p in self.metadata if p.array not in self.rebuilt]

    @property
    def damaged(self) -> list[int]:
        """The damaged entries, which :func:`repair` clears."""
        return sorted({p.entry for p in self.problems if p.entry is not None})

    @property
    def whole_store(self) -> list[Problem]:
        """Damage to arrays of the whole store, which no rerun redoes."""
        return [p for p in self.problems if p.entry is None and p.kind != "metadata"]

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
    with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
        root = store.open_group(loc, mode="r")
        if "complete" not in root:
            raise store.StoreError(f"{loc} has no `complete` array: it is not a diffsketch feature or pairs store")
        return root, store.all_arrays(root)


def _backend(loc: str | Path, writable: bool = False):
    """The Zarr store (key-value backend) at ``loc``, without parsing any metadata."""
    if isinstance(loc, str):
        return zarr.storage.FsspecStore.from_url(loc, read_only=not writable)
    return zarr.storage.LocalStore(loc, read_only=not writable)


def _get(backend, key: str) -> bytes | None:
    buffer = sync(backend.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def _parse(raw: bytes | None) -> tuple[dict | None, str | None]:
    """(the metadata document, None) when ``raw`` is valid Zarr v3 metadata, else (None, what is wrong)."""
    if raw is None:
        return None, "no zarr.json"
    try:
        doc = json.loads(raw)
        node = doc.get("node_type") if isinstance(doc, dict) else None
        if node == "array":
            ArrayV3Metadata.from_dict({k: v for k, v in doc.items() if k != "node_type"} | {"node_type": "array"})
        elif node == "group":
            GroupMetadata.from_dict(doc)
        else:
            raise ValueError(f"node_type is {node!r}, not 'array' or 'group'")
    except Exception as err:  # noqa: BLE001 - json, zarr and its codecs each raise their own errors
        return None, f"not valid ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return doc, None


def _metadata(loc: str | Path) -> tuple[list[Problem], dict, dict]:
    """The damaged ``zarr.json`` documents of the store at ``loc``, what repair rebuilds them from
    (``{document key: the document to write}`` for those it has a copy of) and the valid documents."""
    backend = _backend(loc)
    keys = sorted(k for k in sync(_list(backend, "")) if k == "zarr.json" or k.endswith("/zarr.json"))
    docs, problems = {}, []
    for key in keys:
        doc, error = _parse(_get(backend, key))
        if error is None:
            docs[key] = doc
        else:
            problems.append(Problem(None, key, "metadata", error))
    root = docs.get("zarr.json")
    listed = ((root or {}).get("consolidated_metadata") or {}).get("metadata") or {}
    for path in listed:  # every node the root lists has its own document
        key = f"{path}/zarr.json"
        if key not in keys:
            problems.append(Problem(None, key, "metadata", "no zarr.json"))
    copies = {}
    for p in problems:
        path = p.array.removesuffix("zarr.json").rstrip("/")
        if path in listed:
            copies[p.array] = listed[path]
        elif p.array == "zarr.json":
            backup = ((docs.get("complete/zarr.json") or {}).get("attributes") or {}).get(store.BACKUP)
            if backup is not None:
                copies[p.array] = {"zarr_format": 3, "node_type": "group", "attributes": backup}
        elif path in ("unet", "vae"):
            copies[p.array] = {"zarr_format": 3, "node_type": "group", "attributes": {}}
    return problems, copies, docs


async def _list(backend, prefix: str) -> set[str]:
    return {key async for key in backend.list_prefix(prefix)}


def _stored_keys(array: zarr.Array) -> set[str]:
    """The keys of every chunk (or shard) file of ``array`` that the store holds."""
    return sync(_list(array.store, f"{array.path}/"))


def _row_chunks(array: zarr.Array) -> int:
    """How many (inner) chunks hold one row of ``array``."""
    return math.prod(math.ceil(s / c) for s, c in zip(array.shape[1:], array.chunks[1:]))


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
    feature or pairs store at ``path`` (a local path or an fsspec URL), after its metadata. Where the
    metadata leaves the store unopenable, only the metadata is checked (a repair, then verify again)."""
    loc = store.location(path)
    if not store.is_group(loc):
        raise store.StoreError(f"{loc} is not a Zarr store (no zarr.json); check the path")
    meta, _, docs = _metadata(loc)
    try:
        root, arrays = _open(loc)
    except store.StoreError:
        raise
    except Exception:  # noqa: BLE001 - damaged metadata (listed in `meta`) fails in json or zarr
        if not meta:
            raise
        return Verification(loc, _kind_of(docs), 0, 0, meta)
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
            missing = [k for k in store.chunk_keys(array, entry) if k not in stored[name]]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                problems.append(Problem(entry, name, "missing", f"no chunk file {missing[0]}{more}"))
            elif (error := _decode(array, entry)) is not None:
                problems.append(Problem(entry, name, "corrupt", error))
    problems.sort(key=lambda p: (-1 if p.entry is None else p.entry, p.array))
    return Verification(loc, kind, len(done), chunks, meta + problems)


def _kind_of(docs: dict) -> str:
    """What an entry is, from the valid metadata documents of a store that cannot be opened."""
    for doc in docs.values():
        names = doc.get("dimension_names") or ()
        if names and names[0] in RERUN:
            return names[0]
    return "entry"


def _rebuild(result: Verification) -> None:
    """Write every damaged metadata document that a copy exists for (see the module docstring)."""
    if not result.metadata:
        return
    _, copies, _ = _metadata(result.path)
    backend = _backend(result.path, writable=True)
    for p in result.metadata:
        if p.array in copies:
            data = json.dumps(copies[p.array], indent=2).encode()
            sync(backend.set(p.array, default_buffer_prototype().buffer.from_bytes(data)))
            result.rebuilt.append(p.array)


def repair(result: Verification) -> list[int]:
    """Repair a verified store: rebuild its damaged metadata (where a copy is kept; what was rebuilt is
    added to ``result.rebuilt``), then delete every chunk (or shard) file of each damaged entry and
    clear its completion flag; returns those entries. A store whose metadata kept it from being read
    is verified again after the rebuild. Whole-store damage (:attr:`Verification.whole_store`) is
    left: no rerun can redo it."""
    _rebuild(result)
    if result.metadata and not result.unrebuilt and result.entries == 0 and result.chunks == 0:
        again = verify(result.path)  # the chunks could not be checked before the metadata was rebuilt
        result.problems, result.entries, result.chunks, result.kind = (
            result.metadata + again.problems, again.entries, again.chunks, again.kind)  # fmt: skip
    if result.damaged:
        root = store.open_group(result.path, mode="r+")
        rows = [a for _, a in store.entry_arrays(root) if (a.shards or a.chunks)[0] == 1 and a.basename != "complete"]
        complete = root["complete"]
        for entry in result.damaged:
            for array in rows:  # first: a rerun then rewrites them whole, never reading a damaged file
                for key in store.chunk_keys(array, entry):
                    sync(array.store.delete(key))
            complete[entry] = False  # a whole chunk: written without reading the (maybe damaged) old one
    return result.damaged
