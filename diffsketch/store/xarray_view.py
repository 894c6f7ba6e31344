"""A feature (or pairs) store as an xarray Dataset that never hands out fill values silently.

``xarray.open_zarr`` on a store reads a chunk file that is absent as the array's fill value (zeros),
and the rows of entries not written yet are all fill values too. :func:`open_dataset` opens a group
of a store the same way, after checking that every completed entry has all its chunk files, and
keeps only the completed entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from diffsketch.store import integrity
from diffsketch.store import zarr_store as store

if TYPE_CHECKING:
    import xarray as xr

SHOWN = 10  # damaged entries listed in the message


def _checked_arrays(root: zarr.Group, node: zarr.Group) -> list[zarr.Array]:
    """The arrays of ``node`` written entry by entry (one entry per chunk or shard along axis 0): a
    completed entry has every chunk file of them. The completion flags, the coordinates and the
    arrays written once for the whole store (seeds, labels, ...) are left out, as in
    :func:`~diffsketch.store.integrity.verify`."""
    per_entry = {path for path, _ in store.entry_arrays(root)}
    return [
        array for _, array in store.data_arrays(node)
        if array.path in per_entry and (array.shards or array.chunks)[0] == 1 and array.basename != "complete"
    ]  # fmt: skip


def _absent_files(arrays: list[zarr.Array], entries: np.ndarray) -> dict[int, tuple[str, str]]:
    """``{entry: (array path, first absent chunk key)}`` for the entries that lack a chunk file.

    Local stores: one ``stat`` per chunk file (:func:`~diffsketch.store.zarr_store._absent`, what
    :func:`~diffsketch.store.zarr_store.read` checks). Other stores: one listing per array, since a
    request per chunk file (an S3 ``HEAD`` each) would take minutes on a large store."""
    damaged: dict[int, tuple[str, str]] = {}
    for array in arrays:
        stored = None if isinstance(array.store, zarr.storage.LocalStore) else integrity._stored_keys(array)
        for entry in entries.tolist():
            if entry in damaged:
                continue
            if stored is None:
                key = store._absent(array, entry)
            else:
                key = next((k for k in store.chunk_keys(array, entry) if k not in stored), None)
            if key is not None:
                damaged[entry] = (array.path, key)
    return dict(sorted(damaged.items()))


def _damage_message(path: str | Path, kind: str, damaged: dict[int, tuple[str, str]]) -> str:
    entry, (array, key) = next(iter(damaged.items()))
    plural = integrity.PLURAL.get(kind, "entries")
    more = ""
    if len(damaged) > 1:
        listed = list(damaged)[:SHOWN]
        more = f" ({len(damaged)} {plural} are damaged: {', '.join(map(str, listed))}{', ...' if len(damaged) > SHOWN else ''})"
    rerun = integrity.RERUN.get(kind, "diffsketch sample (or pairs)")
    return (
        f"{path}: {kind} {entry} of `{array}` has no chunk file {key}{more}; the store is damaged and xarray would read "
        f"zeros there. Run `diffsketch inspect --repair {path}` to have the next `{rerun}` redo it"
    )


def open_dataset(path: str | Path, group: str | None = None) -> xr.Dataset:
    """Open a group of a feature store as a lazy xarray Dataset, refusing damage that zarr reads as zeros.

    ``xarray.open_zarr`` alone returns the fill value (zeros) for a chunk file that is absent from
    the store, for instance one lost from a partial copy. This function first checks, without
    reading or decoding any data, that every completed trajectory has all the chunk files of the
    arrays in ``group``: one ``stat`` per chunk file on a local store, one listing per array
    elsewhere. It then keeps only the completed trajectories (those whose ``complete`` flag is
    set) along the ``trajectory`` dimension, so that no fill value of a trajectory that was never
    written (a run stopped or still going) is ever returned, and gives that dimension a coordinate
    with the trajectories' indices in the store (``ds.sel(trajectory=7)`` is trajectory 7 of the
    store, as named by ``diffsketch inspect``).

    The data stays lazy: chunks are read when values are used. A chunk that is present but changed
    or cut then fails its CRC32C checksum or its decoding, and zarr raises that error from the
    read (no value is returned); ``diffsketch inspect --verify PATH`` lists every such chunk. A
    pairs store opens the same way, along ``pair``. Needs xarray (``pip install -e ".[xarray]"``).

    UNet and VAE features are returned as they were sampled: a layer whose features exceeded
    float16 somewhere is stored divided by ``2**e`` there (``e`` in the root group's
    ``unet_exponent`` / ``vae_exponent``), and that layer comes back multiplied by ``2**e``, in
    float32 (computed when it is read with dask installed, else at once); every other layer is
    as stored, float16.

    Parameters
    ----------
    path : str or Path
        The store: a local folder or an fsspec URL (``s3://bucket/features.zarr``).
    group : str, optional
        ``"unet"``, ``"vae"`` or None for the root group (images, noise, latents, seeds, labels, ...).

    Returns
    -------
    xarray.Dataset
        The group's arrays with named dimensions (the layout in ``diffsketch.store.zarr_store``),
        only the completed trajectories, read lazily.

    Raises
    ------
    StoreError
        There is no store at ``path``, its metadata is damaged, it has no group ``group``, or it
        was written without dimension names (``format_version`` 1). The message names the fix.
    CorruptStoreError
        A completed trajectory lacks a chunk file of an array in ``group``. The message names the
        array, the trajectory and the ``diffsketch inspect --repair PATH`` command.

    Examples
    --------
    >>> from diffsketch.store import open_dataset
    >>> ds = open_dataset("data/features.zarr", group="unet")  # doctest: +SKIP
    >>> ds.sel(timestep=981, half="cond")["up3_res2"]  # doctest: +SKIP
    >>> open_dataset("no/such/store.zarr")
    Traceback (most recent call last):
    ...
    diffsketch.store.zarr_store.StoreError: no/such/store.zarr is not a diffsketch feature store (no zarr.json); run `diffsketch sample` first
    """
    loc = store.location(path)
    root = store.open_store(loc)
    if group is not None and not isinstance(root.get(group), zarr.Group):
        groups = ", ".join(sorted(name for name, _ in root.groups())) or "none"
        raise store.StoreError(f"{loc} has no group `{group}` (its groups: {groups})")
    if store.dimension_names(root["complete"]) is None:
        raise store.StoreError(
            f"{loc} was written without Zarr dimension names (format_version 1), so xarray cannot open it; every "
            "diffsketch command still reads it. Make it again with `--overwrite` (`diffsketch sample`, or `diffsketch "
            "pairs` for a pairs store) to open it in xarray"
        )
    node = root if group is None else root[group]
    complete = store.complete_mask(root)  # a damaged flag raises, naming the verify command
    done = np.flatnonzero(complete)
    kind = store.entry_name(root["complete"])
    damaged = _absent_files(_checked_arrays(root, node), done)
    if damaged:
        raise store.CorruptStoreError(_damage_message(loc, kind, damaged))

    try:
        import xarray as xr
    except ImportError:
        raise ImportError('open_dataset needs xarray: pip install -e ".[xarray]"') from None
    ds = xr.open_zarr(root.store, group=group)
    if kind in ds.dims:
        if not complete.all():
            ds = ds.isel({kind: done})
        ds = ds.assign_coords({kind: done})
    if group in ("unet", "vae") and store.exponent_array(group) in root:
        ds = _scaled_back(ds, root[store.exponent_array(group)], done)
    return ds


def _scaled_back(ds: xr.Dataset, exponents: zarr.Array, done: np.ndarray) -> xr.Dataset:
    """``ds`` with each layer that has a non-zero exponent multiplied by ``2**e`` (see
    :func:`~diffsketch.store.zarr_store.read_features`); ``done``: the trajectories ``ds`` holds."""
    import xarray as xr

    e = np.asarray(store.read(exponents))[done]  # (n, [T,] layers) int8: small, read whole
    dims = store.dimension_names(exponents)[:-1]
    for column, layer in enumerate(exponents.attrs["layers"]):
        if layer in ds and e[..., column].any():
            factor = xr.DataArray(np.ldexp(np.float32(1), e[..., column].astype(np.int32)), dims=dims)
            ds[layer] = (ds[layer].astype(np.float32) * factor).transpose(*ds[layer].dims)
    return ds
