"""The `pairs` stage: (image, sketch) pairs made by the trained generator, for distillation.

As in the authors' inference script, every pair samples a fresh image from a random text
condition drawn from the prior (no CDST mixing) and sketches it with the generator from that
trajectory's features. Pair ``i`` uses seeds derived from ``pairs.seed`` and ``i``, and pairs are
generated in fixed blocks of ``pairs.batch_size``, so a resumed store is bit-identical to an
uninterrupted one with the same batch size (other batch sizes agree up to float rounding).

Store (Zarr v3, ``data/pairs.zarr``)::

    images    (N, H, W, 3) uint8    one chunk per pair
    sketches  (N, H, W)    uint8    0 = ink, 255 = paper
    seeds     (N,)         int64
    complete  (N,)         bool     one chunk per pair, written last

Dimension names (Zarr v3 ``dimension_names``, read by xarray): ``pair``, then ``pixel_y``,
``pixel_x`` and (images) ``rgb``. Open the store with ``diffsketch.store.open_dataset``, which
refuses absent chunk files that ``xarray.open_zarr`` would read as zeros. Stores written before
the dimension names (no ``format_version`` attribute) work as before.

A rerun resumes: only incomplete pairs are generated. A store made from another generator,
prior or settings is kept under its key (:mod:`diffsketch.store.kept`; deleted with ``overwrite``). As for `sample`, the projected size is logged
and checked against the free disk space before the model loads, and a full disk stops the run
cleanly (:mod:`diffsketch.store.diskspace`). The store may be a local path or an fsspec URL
(``s3://bucket/pairs.zarr``; see :mod:`diffsketch.store.zarr_store`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from diffsketch.core import DiffsketchError, Params, ResultKey, __version__, batching, distributed, file_inputs, result_key
from diffsketch.diffusion import (
    Capture,
    check_model_reachable,
    initial_noise,
    load_model,
    model_terms,
    sample_conditions,
    unet_layers,
    vae_layers,
)
from diffsketch.store import PAIR, StoreError, compressors, diskspace, replace_other_key, resume_kept
from diffsketch.store import zarr_store as store
from diffsketch.training import TextPrior, inputs_from_result, load_generator

log = logging.getLogger(__name__)


class PairsError(DiffsketchError, ValueError):
    """A pairs input or store is unusable; the message names it and the fix."""


def pair_seeds(seed: int, index: int) -> tuple[int, int]:
    """(prior draw seed, noise seed) of pair ``index``."""
    base = 7_000_003 + seed * 1_000_003 + index * 2
    return base, base + 1


def _store_call(call, *args):
    """A store helper, with its StoreError (e.g. an unreachable bucket) raised as a PairsError."""
    try:
        return call(*args)
    except StoreError as err:
        raise PairsError(str(err)) from None


def open_pairs(path: str | Path) -> zarr.Group:
    """Open the pairs store at a local path or fsspec URL, read-only."""
    path = store.location(path)
    if not _store_call(store.is_group, path):
        raise PairsError(f"pairs store {path} not found; run the pairs stage first (`dvc repro pairs`)")
    try:
        root = store.open_group(path, mode="r")
        for name in ("images", "sketches", "complete"):
            root[name]
    except Exception as err:  # noqa: BLE001 - any failure to open means a damaged store
        raise PairsError(
            f"pairs store {path} is damaged ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); run "
            f"`diffsketch inspect --repair {path}`, then rerun the pairs stage"
        ) from None
    return root


def _create_arrays(root: zarr.Group, count: int, size: int) -> None:
    """The arrays of a store of ``count`` pairs of ``size`` px, into the empty group ``root``."""
    pixels = (PAIR, *store.PIXEL_DIMS)  # Zarr v3 dimension names, so xarray.open_zarr opens the store
    root.create_array("images", shape=(count, size, size, 3), chunks=(1, size, size, 3), dtype="uint8",
                      compressors=compressors(), dimension_names=(*pixels, store.RGB))  # fmt: skip
    root.create_array("sketches", shape=(count, size, size), chunks=(1, size, size), dtype="uint8",
                      compressors=compressors(), dimension_names=pixels)  # fmt: skip
    root.create_array("seeds", shape=(count,), chunks=(count,), dtype="int64", dimension_names=(PAIR,))
    root.create_array("complete", shape=(count,), chunks=(1,), dtype="bool", fill_value=False, dimension_names=(PAIR,))


def _create(path: str | Path, count: int, size: int, attrs: dict) -> zarr.Group:
    _store_call(store.remove, path)
    root = store.open_group(path, mode="w")
    _create_arrays(root, count, size)
    root["seeds"][:] = np.array([pair_seeds(attrs["seed"], i)[1] for i in range(count)], dtype=np.int64)
    root.attrs.update(attrs)
    root.attrs["format_version"] = store.FORMAT_VERSION
    store.protect_metadata(root)  # the copies a damaged zarr.json is rebuilt from
    return root


def _planned_batch_size(root: zarr.Group, configured: int | str) -> int:
    """The block size of this run: the configured one, or with ``auto`` the one the probe chose when the
    store was created (recorded, so resumes keep the plan). The batch size is not part of the key:
    pairs made in other batch sizes agree up to float rounding (see docs/reruns.md)."""
    if configured != "auto":
        return int(configured)
    recorded = root.attrs.get("batch_size")
    if recorded is None:
        raise PairsError("the pairs store records no batch size for pairs.batch_size=auto; set a number")
    return int(recorded)


def loss_networks(generator_meta: dict) -> dict:
    """The CLIP and LPIPS networks the generator was trained with, as its ``.json`` records them.

    >>> loss_networks({"clip": "tiny", "lpips_backbone": "random"})
    {'train_clip': 'tiny', 'train_lpips': 'random'}
    """
    return {"train_clip": generator_meta.get("clip"), "train_lpips": generator_meta.get("lpips_backbone")}


def pairs_key(params: Params, generator_path, prior_path) -> ResultKey:
    """What the pairs' numbers depend on (:mod:`diffsketch.core.keys`): the model by content, the pairs
    settings (not the batch size: every pair has its own seeds), and the generator and prior files by
    content (the generator's own key covers the sampler settings it was trained with)."""
    model_settings, model_inputs = model_terms(params.model)
    return result_key(
        {"pairs": params.pairs},
        resolved=model_settings,
        inputs={**model_inputs, **file_inputs({"generator": generator_path, "prior": prior_path})},
    )


def run_pairs(
    params: Params,
    generator_path: str | Path,
    prior_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    model=None,
    force: bool = False,
) -> str | Path:
    """Generate (or resume) ``pairs.count`` pairs into the store at ``out`` (a local path or an
    fsspec URL); returns its path. ``force``: start even when the projected store is larger than
    the free disk space."""
    workers = distributed.workers(params.model.device)
    params = distributed.assign_device(params, workers)
    out = store.location(out)
    # one writer per store (the run's other workers share it); a full disk stops the run cleanly
    with diskspace.stop_when_full(out, "pairs"), store.writer_lock(out, enabled=workers.main):
        return _run_pairs(params, generator_path, prior_path, out, overwrite, progress, model, workers, force)


def _check_space(out, root: zarr.Group | None, count: int, size: int, todo: int, force: bool) -> None:
    """Log the projected size of the pairs store; refuse to start when the disk cannot hold it
    (unless ``force``). ``root``: the store being resumed, or None for a new one."""
    layout = root
    if root is None:
        layout = store.scratch_group()
        _create_arrays(layout, count, size)
    projection = diskspace.projected_size(out, layout, count - todo)
    diskspace.check_space(out, projection, "pairs", "fewer pairs.count", force=force, replacing=root is None)


def _run_pairs(
    params: Params, generator_path, prior_path, out, overwrite: bool, progress: bool, model, workers, force: bool
) -> str | Path:
    cfg = params.pairs
    generator, meta = load_generator(Path(generator_path))
    prior = TextPrior.load(prior_path)
    for what, found in (("generator", meta.get("model")), ("prior", prior.meta.get("model"))):
        if found != params.model.id:
            raise PairsError(
                f"the {what} was made with model {found!r} but params say model.id={params.model.id!r}; rerun `dvc repro`"
            )
    _store_call(store.check_writable, out)
    key = pairs_key(params, generator_path, prior_path)
    size = int(meta["resolution"])
    root = None
    if _store_call(store.is_group, out):
        root = _store_call(store.open_checked, out, "r+")  # damaged metadata: one line
        if "fingerprint" not in root.attrs:  # its creation was cut off (a killed run): it holds nothing
            root = None
            if workers.main:
                _store_call(store.remove, out)
        elif root.attrs.get("fingerprint") != key.digest:
            root = replace_other_key(root, out, key, overwrite, workers, "generated")
    resume_kept(out, key, workers, "pairs", wanted=root is None and not overwrite)
    if root is None and not overwrite and _store_call(store.is_group, out):
        root = _store_call(store.open_checked, out, "r+")  # damaged metadata: one line
    todo = list(range(cfg.count)) if root is None else [int(i) for i in np.flatnonzero(~store.complete_mask(root))]
    if not todo:
        log.info("%s: all %d pairs complete", out, cfg.count)
        if workers.main:
            store.finalize(root, out, "pairs")
        return out
    if workers.main:
        _check_space(out, root, cfg.count, size, len(todo), force)
    if model is None:
        check_model_reachable(params.model)
        model = load_model(params.model)
    # in the model's dtype (fp16 on CUDA), under autocast: the fp16 features are read without a cast per forward
    generator = generator.to(model.device, model.dtype).eval()
    if model.compiled:
        generator.forward = torch.compile(generator.forward, backend=model.cache.get("compile_backend", "inductor"))
    indices = list(meta["ddim_indices"])
    unet_specs = unet_layers(model.unet.config, size, model.vae_scale_factor, meta.get("capture", "residual"))
    vae_specs = vae_layers(model.vae.config, size)
    steps, guidance = int(meta["steps"]), float(meta["guidance"])

    def make_pairs(batch: list[int], probe: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Images and sketches (uint8) of the pairs ``batch``: each from its own seeds, so the
        batch does not change them (up to float rounding). ``probe``: one DDIM step whose features
        are copied into every kept slot, so the memory held is that of a real batch."""
        conds = torch.cat([prior.sample(1, torch.Generator().manual_seed(pair_seeds(cfg.seed, i)[0])) for i in batch])
        seeds = [pair_seeds(cfg.seed, i)[1] for i in batch]
        noise = initial_noise(model, seeds, size)
        capture = Capture(unet=unet_specs, vae=vae_specs, halves="both", keep=[0] if probe else indices, on_cpu=False)
        result = sample_conditions(
            model,
            conds.to(model.device, model.dtype),
            noise,
            steps=1 if probe else steps,
            guidance=guidance,
            eta=0.0,
            seeds=seeds,
            capture=capture,
            decode=meta.get("decode", "latent"),  # a generator whose metadata has no sample.decode decoded the latent
        )
        if probe:
            result.unet = {k: v.expand(-1, len(indices), *v.shape[2:]).contiguous() for k, v in result.unet.items()}
        autocast = torch.autocast(model.device.type, dtype=model.dtype, enabled=model.dtype != torch.float32)
        with torch.no_grad(), autocast:
            sketches = generator(inputs_from_result(result, model.device)).float()
        sketch_u8 = (sketches[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return result.images_uint8().numpy(), sketch_u8

    workers.barrier()  # every process has read the store before process 0 may replace it
    if root is None and workers.main:
        batch_size = batching.resolve_batch_size(
            cfg.batch_size, model.device, lambda b: make_pairs(list(range(b)), probe=True), cap=cfg.count,
            what="pairs.batch_size",
        )  # fmt: skip
        attrs = dict(fingerprint=key.digest, key_record=key.record, model=params.model.id, count=cfg.count, resolution=size,
                     seed=cfg.seed, version=__version__,
                     networks=loss_networks(meta))  # the generator's CLIP and LPIPS (a random fallback is shown in reports)  # fmt: skip
        attrs["batch_size"] = batch_size  # the blocks (resolved when pairs.batch_size is auto): a resume keeps them
        root = _create(out, cfg.count, size, attrs)
    workers.barrier()  # the store exists
    if root is None:
        root = _store_call(store.open_checked, out, "r+")  # damaged metadata: one line
    batch_size = _planned_batch_size(root, cfg.batch_size)

    pending = set(todo)
    blocks = workers.share(sorted({i // batch_size for i in todo}))  # each process: a contiguous share of the blocks
    mine = [i for i in todo if i // batch_size in set(blocks)]
    if workers.world > 1:
        log.info("worker %d of %d takes %d pairs", workers.rank, workers.world, len(mine))
    bar = tqdm(total=len(mine), desc="pairs", disable=not (progress and workers.main and mine))
    halving = batching.Halving(batch_size, model.device, "pairs")
    for block in blocks:
        batch = [i for i in range(block * batch_size, min((block + 1) * batch_size, cfg.count)) if i in pending]
        for part, (images, sketch_u8) in halving.chunks(batch, make_pairs):  # out of memory: redone in halves
            with store.writing():
                for j, i in enumerate(part):
                    root["images"][i] = images[j]
                    root["sketches"][i] = sketch_u8[j]
                    root["complete"][i] = True  # last: a pair is complete only once both arrays are written
            bar.update(len(part))
    bar.close()
    workers.barrier()
    if workers.main:
        diskspace.record_projection(root, out, "pairs")  # measured on the store's own chunks
        store.finalize(root, out, "pairs")
    return out
