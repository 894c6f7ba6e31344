"""The feature store: one Zarr v3 group per sampling run.

Layout (N trajectories, T timesteps, K kept CFG halves)::

    unet/<layer>   (N, T, K, C, g, g) float16   one inner chunk per (trajectory, timestep),
                                                one shard (file) per trajectory
    vae/<layer>    (N, C, g, g)       float16   captured while the final latent is decoded
    unet_exponent  (N, T, L)          int8      per trajectory, timestep and UNet layer (``attrs["layers"]``):
                                                the power of two its features were divided by to
                                                fit float16 (0 unless they would overflow)
    vae_exponent   (N, L)             int8      the same for the VAE layers
    images         (N, H, W, 3)       uint8
    noise          (N, c, h, w)       float32   initial latent noise
    latents        (N, c, h, w)       float32   final latents
    timesteps      (T,)               int64
    seeds, labels, prompt_ids (N,)    int64     labels index attrs["classes"], prompt_ids attrs["prompts"]
    complete       (N,)               bool      set only after all of a trajectory's arrays are written

Every array carries Zarr v3 ``dimension_names``, so each group (``"unet"``, ``"vae"``, the root)
opens as an xarray Dataset with named dimensions: open it with
:func:`diffsketch.store.xarray_view.open_dataset`, which refuses a store with absent chunk files
(zarr alone reads them as zeros) and leaves out incomplete trajectories:

    trajectory                          axis 0 of every per-trajectory array
    timestep, half                      UNet axes 1 and 2; ``timesteps`` is along ``timestep``
    channel_<C>, y_<g>, x_<g>           a feature layer's channels and grid, named by their size,
                                        because the layers differ in channels and (with
                                        ``sample.pool: full``) in grid, and xarray allows one size
                                        per dimension name: layers of one size share the names
    pixel_y, pixel_x, rgb               ``images``
    latent_channel, latent_y, latent_x  ``noise``, ``latents``

Coordinate arrays (named as their only dimension, as xarray expects): ``timestep`` (int64, in the
root and in ``unet/``, equal to ``timesteps``) and ``unet/half`` (strings, the kept halves). Code
that lists a group's feature layers must skip them (:func:`data_arrays`, or the layer tables in
``attrs["unet_layers"]`` / ``attrs["vae_layers"]``).

``attrs["format_version"]``: 1 = no dimension names and no coordinate arrays (xarray cannot open
it, everything in diffsketch reads it as before); 2 = with them; 3 = with the exponent arrays.
Readers accept all three (no exponent array: every exponent is 0). Read features with
:func:`read_features`, which multiplies the exponents back (a stored row is ``x / 2**e``).

Every array is created at full size up front, so writers never resize metadata. A trajectory is
one shard per array and its ``complete`` flag one chunk of its own, so processes writing disjoint
trajectories never touch the same file. Chunks are compressed with zstd (blosc, bit-shuffled) and
carry a CRC32C checksum, so that a changed or cut chunk fails to read instead of giving wrong
values (stores written before the checksums read as before, checked by decoding alone). Chunks are
written even when all zeros (``array.write_empty_chunks``), so that a chunk file absent from a
completed entry always means damage (:mod:`diffsketch.store.integrity`).

Where a store lives: a local folder (``data/features.zarr``, also ``file:///abs/path``) or an
fsspec URL (``s3://bucket/features.zarr``, ``gs://...``, ``memory://...``; ``s3://`` needs
``s3fs``, ``gs://`` needs ``gcsfs``). Credentials and endpoints come from the filesystem's usual
sources: for S3 the ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE`` /
``AWS_ENDPOINT_URL`` variables, and for any protocol fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>``
variables (e.g. ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path, PurePath

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec
from zarr.core.sync import sync
from zarr.dtype import VariableLengthUTF8

from diffsketch.core import DiffsketchError
from diffsketch.diffusion import LayerSpec

# Consolidated metadata (written by `finalize`) is a zarr-python extension; zarr warns on every open.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part", category=UserWarning)

FORMAT_VERSION = 3  # 2: dimension names and coordinate arrays; 3: exponent arrays. Older stores still read
WRITE_BATCH_CHUNKS = 64
# How every entry is written. zarr encodes a shard's inner chunks in groups of codec_pipeline.batch_size
# (default 1); larger groups halve the per-chunk overhead of the many small per-timestep chunks. Chunks
# equal to the fill value are written too: a chunk missing from a completed entry then means damage.
WRITE_CONFIG = {"codec_pipeline.batch_size": WRITE_BATCH_CHUNKS, "array.write_empty_chunks": True}


# Zarr v3 dimension names (what xarray reads), one per axis; see the module docstring.
TRAJECTORY, TIMESTEP, HALF = "trajectory", "timestep", "half"
PAIR = "pair"  # axis 0 of every array of a pairs store (diffsketch.student.pairs)
PIXEL_DIMS = ("pixel_y", "pixel_x")
RGB = "rgb"
LATENT_DIMS = ("latent_channel", "latent_y", "latent_x")


def feature_dims(channels: int, grid: int) -> tuple[str, str, str]:
    """The (channel, y, x) dimension names of a feature layer: named by size, so that layers with
    other channel counts or grids (``sample.pool: full``) never give one name two sizes."""
    return f"channel_{channels}", f"y_{grid}", f"x_{grid}"


def dimension_names(array: zarr.Array) -> tuple[str, ...] | None:
    """An array's Zarr v3 ``dimension_names`` (None for arrays written without them)."""
    names = getattr(array.metadata, "dimension_names", None)
    return tuple(names) if names else None


def is_coordinate(name: str, array: zarr.Array) -> bool:
    """Whether ``array`` is a coordinate array (its only dimension has its name, as xarray expects)."""
    return dimension_names(array) == (name,)


def data_arrays(group: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """A group's (name, array) pairs by name, coordinate arrays left out: in ``unet/`` and ``vae/``
    these are the feature layers. Stores written before coordinates existed have none to skip."""
    return sorted(((n, a) for n, a in group.arrays() if not is_coordinate(n, a)), key=lambda kv: kv[0])


def all_arrays(root: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """Every array of a store, in every group, as (path, array) sorted by path."""
    return sorted((p, a) for p, a in root.members(max_depth=None) if isinstance(a, zarr.Array))


def entry_arrays(root: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """The arrays with one row per entry (trajectory or pair) along axis 0: those whose first
    dimension is named so, or (stores written before dimension names) as long as ``complete``."""
    n = root["complete"].shape[0]

    def per_entry(path: str, array: zarr.Array) -> bool:
        names = dimension_names(array)
        if names:
            return names[0] in (TRAJECTORY, PAIR)
        return array.shape[:1] == (n,) and path != "timesteps"

    return [(p, a) for p, a in all_arrays(root) if per_entry(p, a)]


class StoreError(DiffsketchError, RuntimeError):
    """The store is missing, damaged or was written with other settings."""


class CorruptStoreError(StoreError):
    """A chunk of the store cannot be read or decoded; the message names the entry and the fix."""


# What reading a damaged chunk raises: a checksum mismatch (ValueError), blosc/zstd decoding failures
# (RuntimeError; zarrs reports all its codec errors so), and OSError for a damaged frame or unreadable file.
DECODE_ERRORS = (ValueError, RuntimeError, OSError)


def store_path(node: zarr.Array | zarr.Group) -> str | Path:
    """Where the store of an open array or group lives: a local Path or an fsspec URL."""
    backend = node.store
    if isinstance(backend, zarr.storage.LocalStore):
        return Path(backend.root)
    fs = getattr(backend, "fs", None)
    if fs is None:
        return str(backend)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{backend.path.lstrip('/')}"


def entry_name(array: zarr.Array) -> str:
    """What axis 0 of a store array counts: ``trajectory``, ``pair`` (``entry`` for stores without names)."""
    names = dimension_names(array)
    return names[0] if names and names[0] in (TRAJECTORY, PAIR) else "entry"


def chunk_keys(array: zarr.Array, entry: int | None = None) -> list[str]:
    """The store keys of the chunk (or shard) files holding row ``entry`` of ``array`` (None: every
    file of the array), in the array's own key encoding.

    Example:
        >>> a = scratch_group().create_array("x", shape=(4, 6), chunks=(1, 3), dtype="uint8")
        >>> chunk_keys(a, 2)
        ['x/c/2/0', 'x/c/2/1']
        >>> len(chunk_keys(a))
        8
    """
    outer = array.shards or array.chunks
    grid = [range(math.ceil(s / c)) for s, c in zip(array.shape, outer)]
    if entry is not None:
        grid[0] = [int(entry) // outer[0]]
    return [f"{array.path}/{array.metadata.encode_chunk_key(tuple(at))}" for at in product(*grid)]


def _damage(array: zarr.Array, where: str, what: str) -> CorruptStoreError:
    path = store_path(array)
    return CorruptStoreError(
        f"{path}: {where} `{array.path}` {what}; the store is damaged. "
        f"Run `diffsketch inspect --verify {path}` to list the damage, and `--repair` to have the next run redo it"
    )


def _absent(array: zarr.Array, selection) -> str | None:
    """The first chunk file of the entry ``array[selection]`` reads that the store lacks (None: all there,
    or not a read of one entry).

    The arrays written entry by entry (one entry per chunk or shard along axis 0) store every chunk of a
    written entry, zeros too (:data:`WRITE_CONFIG`), so an absent one is damage that zarr would read as
    the fill value. One ``exists`` per chunk file of the entry: a ``stat`` per trajectory and layer on a
    local store. The completion flags are left out: an absent flag is an entry not done."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    if not isinstance(first, (int, np.integer)) or array.basename == "complete":
        return None
    if (array.shards or array.chunks)[0] != 1:
        return None  # written once for the whole store (seeds, labels, ...)
    keys = chunk_keys(array, int(first) % array.shape[0])
    backend = array.store
    if isinstance(backend, zarr.storage.LocalStore):  # a stat, without a trip through zarr's event loop
        return next((key for key in keys if not os.path.isfile(os.path.join(backend.root, key))), None)
    return next((key for key in keys if not sync(backend.exists(key))), None)


def read(array: zarr.Array, selection=slice(None), check_files: bool = True) -> np.ndarray:
    """``array[selection]``, with a damaged chunk raised as a :class:`CorruptStoreError` naming the
    store, the entry (the selection's first index, when it is one) and the `inspect --verify` command.
    A chunk file absent from the store is damage too (zarr alone would give the fill value).
    ``check_files=False`` skips the check for absent files: for a reader that read this entry of
    ``array`` with it before (checksums and decoding are checked on every read)."""
    first = selection[0] if isinstance(selection, tuple) and selection else selection
    where = f"{entry_name(array)} {int(first)} of" if isinstance(first, (int, np.integer)) else "array"
    missing = _absent(array, selection) if check_files else None
    if missing is not None:
        raise _damage(array, where, f"has no chunk file {missing}")
    try:
        return array[selection]
    except DECODE_ERRORS as err:
        raise _damage(array, where, f"cannot be read ({type(err).__name__}: {err})") from None


def compressors() -> tuple:
    """zstd (blosc, bit-shuffled), then a CRC32C checksum of the compressed chunk."""
    return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle), Crc32cCodec()


@dataclass(frozen=True)
class StoreLayout:
    trajectories: int
    timesteps: list[int]
    halves: list[str]
    unet: list[LayerSpec]
    vae: list[LayerSpec]
    pool: int | str
    resolution: int
    latent_shape: tuple[int, int, int]  # (c, h, w)


# --- where a store lives: a local Path, or an fsspec URL string -------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)(://|::)")
_COLLAPSED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")  # what Path("s3://b/x") becomes: "s3:/b/x"
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def location(path: str | Path) -> str | Path:
    """A remote fsspec URL as a string (``s3://bucket/x.zarr``, ``memory://x.zarr``, ...), anything
    else as a local Path (``file://`` URLs included). A URL that went through ``Path`` (a typer
    ``Path`` option turns ``s3://b/x`` into ``s3:/b/x``) is restored."""
    text = os.fspath(path)
    if isinstance(path, PurePath) and (collapsed := _COLLAPSED.match(text)):
        import fsspec

        if collapsed.group(1).lower() in fsspec.available_protocols():
            text = f"{collapsed.group(1)}://{text[collapsed.end():]}"
    match = _SCHEME.match(text)
    if match is None:
        return Path(path)
    if match.group(1).lower() in ("file", "local") and match.group(2) == "://":
        return Path("/" + text[match.end():].lstrip("/"))
    return text


def is_url(path: str | Path) -> bool:
    """True when ``path`` names a remote (non-local) fsspec location."""
    return isinstance(location(path), str)


def _remote_hint(url: str, err: BaseException) -> str:
    """What to do about ``err`` raised while reaching ``url``."""
    protocol = url.split(":", 1)[0].lower()
    name = type(err).__name__
    if isinstance(err, ImportError):
        return f"install its filesystem package (`pip install {_PACKAGES.get(protocol, 'fsspec[full]')}`)"
    if "Credential" in name or isinstance(err, PermissionError):
        return "set credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, for s3://)"
    if isinstance(err, FileNotFoundError):
        return "create the bucket first, or fix the URL"
    if "Connect" in name or "Endpoint" in name or isinstance(err, (ConnectionError, TimeoutError)):
        return "check the network, and for an S3-compatible server set AWS_ENDPOINT_URL (e.g. http://host:9000)"
    return "check the URL, the bucket, the credentials (AWS_* variables for s3://) and AWS_ENDPOINT_URL"


def remote_error(url: str, err: BaseException, doing: str = "reach") -> StoreError:
    return StoreError(f"cannot {doing} {url} ({type(err).__name__}: {err}); {_remote_hint(url, err)}")


def _fs_and_path(url: str):
    """(filesystem, path inside it) for a remote URL; a fresh instance, so no stale listing cache."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as err:
        raise remote_error(url, err, "open") from None


def _remote(url: str, call, doing: str = "reach"):
    """Run ``call(fs, path)`` on ``url``, turning filesystem failures into a StoreError with the fix."""
    fs, path = _fs_and_path(url)
    try:
        return call(fs, path.rstrip("/"))
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - botocore/gcsfs errors share no base class
        raise remote_error(url, err, doing) from None


def is_group(path: str | Path) -> bool:
    """Whether a Zarr group (its ``zarr.json``) is at ``path``."""
    loc = location(path)
    if isinstance(loc, str):
        return _remote(loc, lambda fs, p: fs.isfile(f"{p}/zarr.json"))
    return (loc / "zarr.json").is_file()


def exists(path: str | Path) -> bool:
    """Whether a file, folder or (for object stores) any object under the prefix is at ``path``."""
    loc = location(path)
    if isinstance(loc, str):
        return _remote(loc, lambda fs, p: fs.exists(p))
    return loc.exists()


def has_content(path: str | Path) -> bool:
    """Whether anything (a file or a non-empty folder / prefix) is at ``path``."""
    loc = location(path)
    if isinstance(loc, str):
        return _remote(loc, lambda fs, p: fs.exists(p) and (fs.isfile(p) or bool(fs.ls(p))))
    return loc.exists() and (not loc.is_dir() or any(loc.iterdir()))


def remove(path: str | Path) -> None:
    """Delete the store at ``path`` (no error if there is none)."""
    loc = location(path)
    if isinstance(loc, str):
        _remote(loc, lambda fs, p: fs.rm(p, recursive=True) if fs.exists(p) else None, "delete")
    elif loc.exists():
        shutil.rmtree(loc)


def open_group(path: str | Path, mode: str = "r") -> zarr.Group:
    """``zarr.open_group`` on a local path or an fsspec URL (zarr makes an FsspecStore for URLs)."""
    return zarr.open_group(str(location(path)), mode=mode, zarr_format=3 if mode == "w" else None)


class UnfinishedStoreError(StoreError):
    """The store's creation was cut off (no fingerprint): it holds nothing, and a run may replace it."""


class StoreBusyError(StoreError):
    """Another process is writing the store; the message names it (pid, host)."""


@contextmanager
def writer_lock(path: str | Path, enabled: bool = True):
    """Hold the one-writer lock of the local store ``path`` for the duration of the block.

    The lock is an exclusive ``flock`` on ``<store>.lock`` next to the store (outside it, so that
    replacing the store keeps it), holding the owner's pid, host and start time. The operating
    system drops the lock when its process dies, however it dies, so a lock left by a killed run
    never blocks the next one. A second writer fails at once with :class:`StoreBusyError`.
    ``enabled=False`` (the other workers of one distributed run, whose rank 0 holds the lock) and
    fsspec URLs (no shared lock on object stores) take no lock.
    """
    loc = location(path)
    if not enabled or isinstance(loc, str):
        yield
        return
    import fcntl
    import socket
    import time

    lock = loc.with_name(loc.name + ".lock")
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(f"output path {loc} is not writable ({err.strerror}); choose a writable output path") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = ""
            try:
                owner = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise StoreBusyError(
                f"{loc} is being written by another process ({owner or 'unknown owner'}; lock {lock}); wait for it to "
                "finish or stop it, then rerun (it resumes). Two runs on one store would write the same entries"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not a file its last owner just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {stamp}\n".encode(), 0)
        yield
    finally:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


def existing_parent(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent folder (where it would be made)."""
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    return parent


def check_writable(path: str | Path) -> None:
    """Fail early (before loading any model) when ``path`` (a local path or an fsspec URL) cannot be written."""
    loc = location(path)
    if isinstance(loc, str):
        _check_writable_remote(loc)
        return
    path = loc
    parent = existing_parent(path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"output path {path} exists and is not a folder; remove it or choose another output path")
    target = path if path.exists() else parent
    probe = target / f".diffsketch-write-probe-{os.getpid()}"  # one per process: parallel workers probe at once
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise StoreError(f"output path {path} is not writable ({err.strerror}); choose a writable output path") from None


def _check_writable_remote(url: str) -> None:
    """Write and delete a probe object under ``url`` (catches a missing package, bucket or credentials)."""

    def probe(fs, p):
        if fs.isfile(p):
            raise StoreError(f"output path {url} exists and is not a folder; remove it or choose another output path")
        name = f"{p}/.diffsketch-write-probe-{os.getpid()}"  # one per process, as for local paths
        fs.pipe_file(name, b"")
        fs.rm_file(name)

    _remote(url, probe, "write to")


def create(path: str | Path, layout: StoreLayout, attrs: dict, overwrite: bool = False) -> zarr.Group:
    """Create an empty store at full size at a local path or fsspec URL. ``attrs['fingerprint']`` is
    written last (marks creation done)."""
    path = location(path)
    if exists(path):
        if not overwrite:
            raise StoreError(f"{path} already exists; pass --overwrite to replace it")
        remove(path)
    root = open_group(path, mode="w")
    _create_arrays(root, layout)
    root.attrs.update({k: v for k, v in attrs.items() if k != "fingerprint"})
    root.attrs["format_version"] = FORMAT_VERSION
    root.attrs["halves"] = layout.halves
    root.attrs["fingerprint"] = attrs["fingerprint"]
    protect_metadata(root)
    return root


def scratch_group() -> zarr.Group:
    """An empty Zarr v3 group in memory: lay a store out there to measure it before writing anything."""
    return zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)


def layout_template(layout: StoreLayout) -> zarr.Group:
    """The arrays of a store of ``layout``, in memory and empty (:func:`diffsketch.store.diskspace.projected_size`)."""
    root = scratch_group()
    _create_arrays(root, layout)
    return root


def _create_arrays(root: zarr.Group, layout: StoreLayout) -> None:
    """Every array of a feature store of ``layout``, at full size, into the empty group ``root``."""
    n, t, k = layout.trajectories, len(layout.timesteps), len(layout.halves)
    timesteps = np.asarray(layout.timesteps, dtype="int64")
    unet = root.create_group("unet")
    for spec in layout.unet:
        g = spec.grid(layout.pool)
        unet.create_array(
            spec.name,
            shape=(n, t, k, spec.channels, g, g),
            dtype="float16",
            chunks=(1, 1, k, spec.channels, g, g),
            shards=(1, t, k, spec.channels, g, g),
            compressors=compressors(),
            fill_value=0,
            dimension_names=(TRAJECTORY, TIMESTEP, HALF, *feature_dims(spec.channels, g)),
            attributes={"module": spec.module},
        )
    _coordinate(unet, TIMESTEP, timesteps)
    _coordinate(unet, HALF, np.asarray(layout.halves, dtype=object), dtype=VariableLengthUTF8())
    vae = root.create_group("vae")
    for spec in layout.vae:
        g = spec.grid(layout.pool)
        vae.create_array(
            spec.name, shape=(n, spec.channels, g, g), dtype="float16", chunks=(1, spec.channels, g, g),
            compressors=compressors(), fill_value=0, dimension_names=(TRAJECTORY, *feature_dims(spec.channels, g)),
            attributes={"module": spec.module},
        )  # fmt: skip
    r = layout.resolution
    root.create_array("images", shape=(n, r, r, 3), dtype="uint8", chunks=(1, r, r, 3), compressors=compressors(),
                      fill_value=0, dimension_names=(TRAJECTORY, *PIXEL_DIMS, RGB))  # fmt: skip
    for name in ("noise", "latents"):
        root.create_array(name, shape=(n, *layout.latent_shape), dtype="float32", chunks=(1, *layout.latent_shape),
                          compressors=compressors(), fill_value=0,
                          dimension_names=(TRAJECTORY, *LATENT_DIMS))  # fmt: skip
    for group, specs, lead in (("unet", layout.unet, (t,)), ("vae", layout.vae, ())):
        if specs:
            shape = (n, *lead, len(specs))
            root.create_array(
                exponent_array(group), shape=shape, dtype="int8", chunks=(1, *shape[1:]), compressors=compressors(),
                fill_value=0, dimension_names=(TRAJECTORY, *(TIMESTEP,) * len(lead), f"{group}_layer"),
                attributes={"layers": [spec.name for spec in specs]},
            )  # fmt: skip
    per_trajectory = dict(shape=(n,), dimension_names=(TRAJECTORY,))
    for name in ("seeds", "labels", "prompt_ids"):
        root.create_array(name, dtype="int64", chunks=(max(n, 1),), fill_value=0, **per_trajectory)
    root.create_array("complete", dtype="bool", chunks=(1,), fill_value=False, **per_trajectory)
    root.create_array("timesteps", data=timesteps, dimension_names=(TIMESTEP,))
    _coordinate(root, TIMESTEP, timesteps)


def _coordinate(group: zarr.Group, name: str, values: np.ndarray, dtype=None) -> None:
    """A coordinate array: named as its one dimension, so xarray makes it that dimension's index."""
    array = group.create_array(name, shape=values.shape, dtype=dtype or values.dtype, dimension_names=(name,))
    array[:] = values


def metadata_error(path: str | Path, err: BaseException) -> StoreError:
    """The one-line error of a store whose metadata (a ``zarr.json``) cannot be read, with the fix."""
    detail = str(err).splitlines()[0] if str(err) else ""
    return StoreError(
        f"{path}: the store's metadata (a zarr.json) is damaged ({type(err).__name__}: {detail}). Run "
        f"`diffsketch inspect --verify {path}` to name it and `diffsketch inspect --repair {path}` to rebuild it"
    )


def open_checked(path: str | Path, mode: str = "r") -> zarr.Group:
    """:func:`open_group` of a feature or pairs store whose metadata is read in full now, so that a
    damaged ``zarr.json`` is one :func:`metadata_error` line here instead of a traceback later."""
    try:
        root = open_group(path, mode=mode)
        if root.metadata.consolidated_metadata is None:
            all_arrays(root)  # every array's metadata (consolidated stores hold it all in the root's)
    except Exception as err:  # noqa: BLE001 - corrupt metadata fails in json, zarr or the codecs
        raise metadata_error(location(path), err) from None
    return root


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open the feature store at a local path or fsspec URL (``s3://bucket/features.zarr``).

    Raises:
        StoreError: there is no store, or its metadata is damaged (the message names the repair command).
    """
    path = location(path)
    if not is_group(path):
        where = " (check the bucket, the URL and AWS_ENDPOINT_URL)" if isinstance(path, str) else ""
        raise StoreError(
            f"{path} is not a diffsketch feature store (no zarr.json){where}; run `diffsketch sample` first"
        )
    root = open_checked(path, mode)
    if "fingerprint" not in root.attrs:
        raise UnfinishedStoreError(f"{path} was not finished being created (no fingerprint); delete it and sample again")
    return root


BACKUP = "store_attrs"  # the attribute of `complete` that holds a copy of the root's attributes


def protect_metadata(root: zarr.Group) -> None:
    """Keep the copies that a damaged ``zarr.json`` is rebuilt from (``diffsketch inspect --repair``):
    the root's attributes in the ``complete`` array's (attribute :data:`BACKUP`), and every array's
    metadata consolidated into the root's. Called when a store is created and when a run finishes."""
    root["complete"].attrs[BACKUP] = dict(root.attrs)
    zarr.consolidate_metadata(root.store)


def finalize(root: zarr.Group, path: str | Path, what: str = "trajectories") -> None:
    """The last step of a run (process 0 only): check every item is complete, then consolidate the metadata.

    Consolidated metadata lets readers (over S3 especially) open every array with one request.

    Raises:
        StoreError: items are missing (a worker failed); rerunning the same command resumes.
    """
    missing = np.flatnonzero(~complete_mask(root))
    if missing.size:
        raise StoreError(
            f"{path}: {missing.size} {what} are still incomplete (e.g. {missing[:5].tolist()}); a worker failed or was "
            "stopped; rerun the same command to finish them"
        )
    try:
        protect_metadata(root)
    except Exception as err:  # noqa: BLE001 - consolidation reads every zarr.json: a damaged one fails in json or zarr
        raise metadata_error(location(path), err) from None


def complete_mask(root: zarr.Group) -> np.ndarray:
    """Which entries are complete (a damaged flag chunk raises :class:`CorruptStoreError`)."""
    return np.asarray(read(root["complete"]), dtype=bool)


@contextmanager
def writing():
    """Write entries with :data:`WRITE_CONFIG` (arrays must be opened inside the block to take it)."""
    with zarr.config.set(WRITE_CONFIG):
        yield


def nonfinite(arrays: dict[str, np.ndarray]) -> dict[int, str]:
    """The rows (axis 0) of a batch that hold a NaN or an infinite value, each with the first array
    (in ``arrays`` order) that holds one; integer arrays are finite.

    Example:
        >>> nonfinite({"a": np.array([[0.0, 1.0], [np.inf, 2.0]]), "b": np.array([[np.nan], [0.0]])})
        {0: 'b', 1: 'a'}
    """
    bad: dict[int, str] = {}
    for name, x in arrays.items():
        x = np.asarray(x)
        if x.dtype.kind != "f" or not len(x):
            continue
        for row in np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)).tolist():
            bad.setdefault(row, name)
    return dict(sorted(bad.items()))


def write_trajectory(root: zarr.Group, index: int, unet: dict, vae: dict, image, noise, latents) -> None:
    """Write one trajectory's arrays, then mark it complete (a crash before that leaves it incomplete)."""
    batch = lambda x: np.asarray(x)[None]  # noqa: E731
    write_trajectories(
        root, [index], {k: batch(v) for k, v in unet.items()}, {k: batch(v) for k, v in vae.items()},
        batch(image), batch(noise), batch(latents),
    )  # fmt: skip


def _runs(indices: list[int]) -> list[tuple[int, int, int]]:
    """Contiguous runs of ``indices`` as (position in the list, first index, stop index)."""
    runs, start = [], 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            runs.append((start, indices[start], indices[k - 1] + 1))
            start = k
    return runs


def exponent_array(group: str) -> str:
    """The root array holding the float16 exponents of ``group``'s (``"unet"`` or ``"vae"``) layers."""
    return f"{group}_exponent"


def exponent_rows(root: zarr.Group, unet: dict, vae: dict, rows: list[int]) -> dict[str, np.ndarray]:
    """The rows ``rows`` of a batch's per-layer exponents (``{name: (B, T)}`` UNet, ``{name: (B,)}``
    VAE, as :class:`~diffsketch.diffusion.sampling.SampleResult` holds them), stacked into the
    store's exponent arrays (``(len(rows), T, L)``, ``(len(rows), L)``); a layer without exponents
    gets zeros. A store without exponent arrays (format < 3) gets none."""
    out = {}
    for group, given in (("unet", unet), ("vae", vae)):
        name = exponent_array(group)
        if name not in root:
            continue
        array = root[name]
        zeros = np.zeros((len(rows), *array.shape[1:-1]), dtype=np.int8)
        columns = [np.asarray(given[layer])[rows] if layer in given else zeros for layer in array.attrs["layers"]]
        out[name] = np.stack(columns, axis=-1).astype(np.int8)
    return out


def read_features(root: zarr.Group, group: str, name: str, selection=slice(None)) -> np.ndarray:
    """``root[f"{group}/{name}"][selection]`` as the features were: each stored row times ``2**e``
    with its exponent ``e`` (float32 where one is not 0, else as stored, float16). Damage raises as
    in :func:`read`. ``selection`` indexes (trajectory, timestep, ...) for ``unet``, (trajectory,
    ...) for ``vae``, with integers and slices.

    Example:
        >>> root = open_store("data/features.zarr")  # doctest: +SKIP
        >>> read_features(root, "unet", "up1_res0", (0, slice(None), 1)).shape  # doctest: +SKIP
        (50, 1280, 2, 2)
    """
    x = read(root[f"{group}/{name}"], selection)
    if exponent_array(group) not in root:
        return x
    exponents = root[exponent_array(group)]
    lead = exponents.ndim - 1  # trajectory (and timestep for the UNet)
    sel = selection if isinstance(selection, tuple) else (selection,)
    sel = (tuple(sel[:lead]) + (slice(None),) * lead)[:lead]
    return scale_back(x, read(exponents, (*sel, exponents.attrs["layers"].index(name))))


def scale_back(x: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """Stored features ``x`` times ``2**exponents``, broadcast over ``x``'s leading axes (``x`` as
    is where every exponent is 0, else float32).

    Example:
        >>> scale_back(np.full((2, 3), 0.5, np.float16), np.array([0, 2])).tolist()
        [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0]]
    """
    e = np.asarray(exponents)
    if not e.any():
        return x
    return np.ldexp(np.asarray(x, dtype=np.float32), e.reshape(e.shape + (1,) * (np.ndim(x) - e.ndim)).astype(np.int32))


def write_trajectories(
    root: zarr.Group, indices: list[int], unet: dict, vae: dict, images, noise, latents, exponents: dict | None = None
) -> None:
    """Write a batch of trajectories (arrays stacked along axis 0, in ``indices`` order), one write
    per array per contiguous run of indices; each run is marked complete only after all its arrays.
    ``exponents``: :func:`exponent_rows` of the batch (None: all 0)."""
    named = {f"unet/{k}": v for k, v in unet.items()} | {f"vae/{k}": v for k, v in vae.items()}
    named |= {"images": images, "noise": noise, "latents": latents}
    named |= exponents if exponents is not None else exponent_rows(root, {}, {}, list(range(len(indices))))
    with writing():
        for pos, first, stop in _runs(list(indices)):
            rows = slice(pos, pos + stop - first)
            for name, value in named.items():
                root[name][first:stop] = np.asarray(value[rows])
            root["complete"][first:stop] = True


class BatchWriter:
    """Writes batches into a store; with ``background=True`` on one thread while the next batch is
    sampled (worth it when an accelerator does the sampling; on a CPU the writer would compete
    with torch for the cores, so there it writes inline).

    At most one batch is in flight (bounded memory); an error in the writer is raised on the next
    ``submit`` or on exit. Used as a context manager, it always waits for the pending write, so an
    interrupted run never leaves a batch half-written and marked complete.
    """

    def __init__(self, root: zarr.Group, background: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.root, self.background = root, background
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self._pending = None

    def submit(self, *batch) -> None:
        self.wait()
        if not self.background:
            write_trajectories(self.root, *batch)
            return
        self._pending = self._executor.submit(write_trajectories, self.root, *batch)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
            elif self._pending is not None:
                self._pending.exception()  # finish the write in flight, keep the original error
        finally:
            self._executor.shutdown(wait=True)


def disk_bytes(path: str | Path) -> int:
    """Bytes stored under a local path or fsspec URL."""
    loc = location(path)
    if isinstance(loc, str):
        return int(_remote(loc, lambda fs, p: fs.du(p, total=True)))
    return sum(f.stat().st_size for f in loc.rglob("*") if f.is_file())


def summary(path: str | Path) -> dict:
    """What `diffsketch inspect` shows: arrays, shapes, dtypes, completion, size and compression."""
    root = open_store(path)
    done = complete_mask(root)
    n = len(done)
    arrays, logical = [], 0
    for name, array in data_arrays(root):  # coordinate arrays (xarray's indexes) are not listed
        arrays.append((name, array.shape, str(array.dtype), array.chunks))
    for group in ("unet", "vae"):
        for name, array in data_arrays(root[group]) if group in root else ():  # a pairs store has neither
            arrays.append((f"{group}/{name}", array.shape, str(array.dtype), array.chunks))
    for name, shape, dtype, _ in arrays:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        per_trajectory = name not in ("timesteps", "seeds", "labels", "prompt_ids", "complete")
        logical += nbytes * (int(done.sum()) / n if per_trajectory and n else 1)
    on_disk = disk_bytes(path)
    return dict(
        path=str(location(path)),
        attrs=dict(root.attrs),
        arrays=arrays,
        trajectories=n,
        complete=int(done.sum()),
        disk_bytes=on_disk,
        logical_bytes=int(logical),
        compression_ratio=logical / on_disk if on_disk else float("nan"),
    )
