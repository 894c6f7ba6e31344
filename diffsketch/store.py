"""The feature store: one Zarr v3 group per sampling run.

Layout (N trajectories, T timesteps, K kept CFG halves)::

    unet/<layer>   (N, T, K, C, g, g) float16   one inner chunk per (trajectory, timestep),
                                                one shard (file) per trajectory
    vae/<layer>    (N, C, g, g)       float16   captured while the final latent is decoded
    images         (N, H, W, 3)       uint8
    noise          (N, c, h, w)       float32   initial latent noise
    latents        (N, c, h, w)       float32   final latents
    timesteps      (T,)               int64
    seeds, labels, prompt_ids (N,)    int64     labels index attrs["classes"], prompt_ids attrs["prompts"]
    complete       (N,)               bool      set only after all of a trajectory's arrays are written

Every array is created at full size up front, so writers never resize metadata. A trajectory is
one shard per array and its ``complete`` flag one chunk of its own, so processes writing disjoint
trajectories never touch the same file. Chunks are compressed with zstd (blosc, bit-shuffled).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from diffsketch.features import LayerSpec

FORMAT_VERSION = 1
WRITE_BATCH_CHUNKS = 64


class StoreError(RuntimeError):
    """The store is missing, damaged or was written with other settings."""


def _compressor():
    return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)


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


def check_writable(path: str | Path) -> None:
    """Fail early (before loading any model) when ``path`` cannot be written."""
    path = Path(path)
    parent = path if path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if path.exists() and not path.is_dir():
        raise StoreError(f"output path {path} exists and is not a folder; remove it or choose another output path")
    target = path if path.exists() else parent
    probe = target / ".diffsketch-write-probe"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise StoreError(f"output path {path} is not writable ({err.strerror}); choose a writable output path") from None


def create(path: str | Path, layout: StoreLayout, attrs: dict, overwrite: bool = False) -> zarr.Group:
    """Create an empty store at full size. ``attrs['fingerprint']`` is written last (marks creation done)."""
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise StoreError(f"{path} already exists; pass --overwrite to replace it")
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, t, k = layout.trajectories, len(layout.timesteps), len(layout.halves)
    unet = root.create_group("unet")
    for spec in layout.unet:
        g = spec.grid(layout.pool)
        unet.create_array(
            spec.name,
            shape=(n, t, k, spec.channels, g, g),
            dtype="float16",
            chunks=(1, 1, k, spec.channels, g, g),
            shards=(1, t, k, spec.channels, g, g),
            compressors=_compressor(),
            fill_value=0,
        )
    vae = root.create_group("vae")
    for spec in layout.vae:
        g = spec.grid(layout.pool)
        vae.create_array(
            spec.name, shape=(n, spec.channels, g, g), dtype="float16", chunks=(1, spec.channels, g, g),
            compressors=_compressor(), fill_value=0,
        )  # fmt: skip
    r = layout.resolution
    root.create_array("images", shape=(n, r, r, 3), dtype="uint8", chunks=(1, r, r, 3), compressors=_compressor(), fill_value=0)
    for name in ("noise", "latents"):
        root.create_array(name, shape=(n, *layout.latent_shape), dtype="float32", chunks=(1, *layout.latent_shape),
                          compressors=_compressor(), fill_value=0)  # fmt: skip
    for name in ("seeds", "labels", "prompt_ids"):
        root.create_array(name, shape=(n,), dtype="int64", chunks=(max(n, 1),), fill_value=0)
    root.create_array("complete", shape=(n,), dtype="bool", chunks=(1,), fill_value=False)
    root.create_array("timesteps", data=np.asarray(layout.timesteps, dtype="int64"))
    root.attrs.update({k: v for k, v in attrs.items() if k != "fingerprint"})
    root.attrs["format_version"] = FORMAT_VERSION
    root.attrs["halves"] = layout.halves
    root.attrs["fingerprint"] = attrs["fingerprint"]
    return root


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a diffsketch feature store (no zarr.json); run `diffsketch sample` first")
    try:
        root = zarr.open_group(str(path), mode=mode)
    except Exception as err:  # corrupt metadata
        raise StoreError(f"{path} could not be opened as a Zarr store ({err}); delete it and sample again") from err
    if "fingerprint" not in root.attrs:
        raise StoreError(f"{path} was not finished being created (no fingerprint); delete it and sample again")
    return root


def complete_mask(root: zarr.Group) -> np.ndarray:
    return np.asarray(root["complete"][:], dtype=bool)


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


def write_trajectories(root: zarr.Group, indices: list[int], unet: dict, vae: dict, images, noise, latents) -> None:
    """Write a batch of trajectories (arrays stacked along axis 0, in ``indices`` order), one write
    per array per contiguous run of indices; each run is marked complete only after all its arrays."""
    named = {f"unet/{k}": v for k, v in unet.items()} | {f"vae/{k}": v for k, v in vae.items()}
    named |= {"images": images, "noise": noise, "latents": latents}
    # zarr encodes a shard's inner chunks in groups of codec_pipeline.batch_size (default 1); larger
    # groups halve the per-chunk overhead of the many small per-timestep chunks.
    with zarr.config.set({"codec_pipeline.batch_size": WRITE_BATCH_CHUNKS}):
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
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def summary(path: str | Path) -> dict:
    """What `diffsketch inspect` shows: arrays, shapes, dtypes, completion, size and compression."""
    root = open_store(path)
    done = complete_mask(root)
    n = len(done)
    arrays, logical = [], 0
    for name, array in sorted(root.arrays(), key=lambda kv: kv[0]):
        arrays.append((name, array.shape, str(array.dtype), array.chunks))
    for group in ("unet", "vae"):
        for name, array in sorted(root[group].arrays(), key=lambda kv: kv[0]):
            arrays.append((f"{group}/{name}", array.shape, str(array.dtype), array.chunks))
    for name, shape, dtype, _ in arrays:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        per_trajectory = name not in ("timesteps", "seeds", "labels", "prompt_ids", "complete")
        logical += nbytes * (int(done.sum()) / n if per_trajectory and n else 1)
    on_disk = disk_bytes(path)
    return dict(
        path=str(path),
        attrs=dict(root.attrs),
        arrays=arrays,
        trajectories=n,
        complete=int(done.sum()),
        disk_bytes=on_disk,
        logical_bytes=int(logical),
        compression_ratio=logical / on_disk if on_disk else float("nan"),
    )
