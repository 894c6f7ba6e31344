"""The `sample` stage: plan trajectories, check every input, sample, and fill the feature store.

Inputs are checked cheapest-first (params, prompts, output path, model path), then the model is
loaded and its layer table checked against the pooling, all before the first denoising step. A
rerun over an interrupted store samples only the incomplete trajectories; completed ones are
never rewritten. Before the first step the projected size of the store is logged, and the run
refuses to start when the disk cannot hold it (unless ``force``); a disk that fills up anyway
stops the run cleanly, resumable (:mod:`diffsketch.store.diskspace`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffsketch.core import DiffsketchError, Params, ResultKey, __version__, batching, distributed, result_key
from diffsketch.diffusion import (
    Capture,
    check_model_reachable,
    check_pool,
    load_model,
    load_prompts,
    model_terms,
    plan_trajectories,
    prompt_token_lengths,
    sample,
    unet_layers,
    vae_layers,
)
from diffsketch.store import diskspace, kept
from diffsketch.store import zarr_store as store

log = logging.getLogger(__name__)

SMALLER = "a smaller sample.pool, fewer sample.trajectories"  # what makes a feature store smaller


class SampleInputError(DiffsketchError, ValueError):
    """A sampling input is unusable; the message names it and the fix."""


def _halves(params: Params) -> list[str]:
    names = {"cond": ["cond"], "uncond": ["uncond"], "both": ["uncond", "cond"]}[params.sample.halves]
    if params.sample.guidance <= 1.0 and params.sample.halves != "cond":
        raise SampleInputError(
            f"sample.halves={params.sample.halves} needs classifier-free guidance; set sample.guidance > 1 or sample.halves=cond"
        )
    return names


def _planned_batch_size(root, configured: int | str) -> int:
    """The batch size of this run: the configured one, or with ``auto`` the one the probe chose when the
    store was created (recorded, so resumes keep the plan). The batch size is not part of the key:
    trajectories sampled in other batch sizes agree up to float rounding (see docs/reruns.md)."""
    if configured != "auto":
        return int(configured)
    recorded = root.attrs.get("batch_size")
    if recorded is None:
        raise store.StoreError("the store records no batch size for sample.batch_size=auto; set a number")
    return int(recorded)


def sample_key(params: Params, plan) -> ResultKey:
    """What the feature store's numbers depend on (:mod:`diffsketch.core.keys`): the model by content,
    the sampling settings (not the batch size: every trajectory has its own seed) and the planned
    trajectories (prompt, label and seed of each; the prompts by text, never by path)."""
    model_settings, model_inputs = model_terms(params.model)
    planned = hashlib.sha256(json.dumps([(t.prompt, t.label, t.seed) for t in plan]).encode()).hexdigest()[:16]
    return result_key(
        {"sample": params.sample},
        resolved=model_settings,
        drop=["sample.prompts", "sample.seed"],  # both enter through the plan
        inputs={**model_inputs, "trajectories": planned},
    )


def run_sample(
    params: Params, out: str | Path, overwrite: bool = False, progress: bool = True, model=None, force: bool = False
) -> str | Path:
    """Fill (or resume) the feature store at ``out``, a local path or an fsspec URL such as
    ``s3://bucket/features.zarr`` (see :mod:`diffsketch.store.zarr_store`); returns its path (a URL as a string).

    ``model``: an already loaded :class:`SDModel` matching ``params.model`` (benchmarks, notebooks).
    ``force``: start even when the projected store is larger than the free disk space.
    """
    workers = distributed.workers(params.model.device)
    params = distributed.assign_device(params, workers)
    out = store.location(out)
    # one writer per store (the run's other workers share it); a full disk stops the run cleanly
    with diskspace.stop_when_full(out, "trajectories"), store.writer_lock(out, enabled=workers.main):
        return _run_sample(params, out, overwrite, progress, model, workers, force)


def _check_space(out, root, layout: store.StoreLayout, force: bool) -> None:
    """Log the projected store size; refuse to start when the disk cannot hold it (unless ``force``).
    ``root``: the store being resumed, or None for a new one (replacing whatever is at ``out``)."""
    done = 0 if root is None else int(store.complete_mask(root).sum())
    projection = diskspace.projected_size(out, root if root is not None else store.layout_template(layout), done)
    diskspace.check_space(out, projection, "trajectories", SMALLER, force=force, replacing=root is None)


class NonFiniteFeaturesError(store.StoreError):
    """Trajectories gave NaN or infinite values even sampled again in float32; the message names them."""


def _write_finite(writer, items: list, result, keep: list[int]) -> list:
    """Submit the rows ``keep`` of a sampled batch (the trajectories ``items``) whose features, noise and
    latents are all finite; returns ``[(trajectory, first array with a non-finite value)]`` of the others."""
    unet = {name: x[keep].numpy() for name, x in result.unet.items()}
    vae = {name: x[keep].numpy() for name, x in result.vae.items()}
    images, noise, latents = result.images_uint8()[keep].numpy(), result.noise[keep].numpy(), result.latents[keep].numpy()
    exponents = store.exponent_rows(writer.root, result.unet_exponents, result.vae_exponents, keep)
    named = {f"unet/{k}": v for k, v in unet.items()} | {f"vae/{k}": v for k, v in vae.items()}
    bad = store.nonfinite(named | {"noise": noise, "latents": latents})
    good = [r for r in range(len(items)) if r not in bad]
    if good:
        rows = lambda arrays: {k: v[good] for k, v in arrays.items()}  # noqa: E731
        writer.submit(
            [items[r].index for r in good], rows(unet), rows(vae), images[good], noise[good], latents[good], rows(exponents)
        )
    return [(items[r], name) for r, name in bad.items()]


def _retry_in_float32(params: Params, model, root, out, failed: list, denoise) -> None:
    """Sample each held-back trajectory again, alone, with the model in float32, and write it if it is
    finite now; the store records the rest (attribute ``failed``) and the run stops naming them."""
    if str(model.dtype) != "torch.float32":
        model = load_model(params.model.model_copy(update={"dtype": "float32"}))
    lost = []
    with store.BatchWriter(root, background=False) as writer:
        for item, name in failed:
            log.warning("trajectory %d: NaN or infinite values in %s; sampling it again in float32", item.index, name)
            lost += _write_finite(writer, [item], denoise(model, [item]), [0])
    if not lost:
        return
    root.attrs["failed"] = {str(t.index): f"NaN or infinite values in {name}, also in float32" for t, name in lost}
    item, name = lost[0]
    raise NonFiniteFeaturesError(
        f"{out}: {len(lost)} trajectories ({', '.join(str(t.index) for t, _ in lost)}) gave NaN or infinite values even "
        f"sampled again in float32 (trajectory {item.index}: {name}), so they are not written and stay incomplete "
        "(the store's attribute `failed` lists them). Check the model (model.id, model.dtype) and these prompts; "
        "rerunning the same command tries them again"
    )


def _run_sample(params: Params, out, overwrite: bool, progress: bool, model, workers, force: bool) -> str | Path:
    # 1. Check the inputs that need no model, cheapest first.
    cfg = params.sample
    halves = _halves(params)
    prompts = load_prompts(cfg.prompts)
    plan = plan_trajectories(prompts, cfg.trajectories, cfg.seed)
    store.check_writable(out)
    check_model_reachable(params.model)
    unique_prompts = sorted({p.text for p in prompts})
    classes = sorted({p.label for p in prompts})
    key = sample_key(params, plan)

    # 2. Decide what happens to the store at `out`: `root` is the store to resume, or None when a
    #    store is created. A store of another key is set aside under its key (or deleted with
    #    --overwrite); a store kept earlier under this key is taken back and resumed.
    root = None
    if store.is_group(out):
        try:
            root = store.open_store(out, mode="r+")
        except store.StoreError as err:
            if not overwrite and not isinstance(err, store.UnfinishedStoreError):
                raise
            log.warning("replacing unusable store %s (%s)", out, err)
            if workers.main and isinstance(err, store.UnfinishedStoreError):
                store.remove(out)  # its creation was cut off (a killed run): it holds nothing
        if root is not None and root.attrs.get("fingerprint") != key.digest:
            root = kept.replace_other_key(root, out, key, overwrite, workers, "sampled")
    elif not overwrite and store.has_content(out):
        raise store.StoreError(f"{out} exists and is not a feature store; remove it or choose another --out")
    kept.resume_kept(out, key, workers, "store", wanted=root is None and not overwrite)
    if root is None and store.is_group(out) and not overwrite:
        root = store.open_store(out, mode="r+")

    # 3. Load the model and check what needs it: prompt lengths, pooling, the store's layout, disk space.
    model = model if model is not None else load_model(params.model)
    too_long = [p for p, n in zip(unique_prompts, prompt_token_lengths(model, unique_prompts)) if n > 77]
    if too_long:
        raise SampleInputError(f"{len(too_long)} prompt(s) exceed CLIP's 77 tokens, e.g. {too_long[0]!r}; shorten them")
    unet_specs = unet_layers(model.unet.config, cfg.resolution, model.vae_scale_factor, cfg.capture)
    vae_specs = vae_layers(model.vae.config, cfg.resolution)
    try:
        check_pool(unet_specs, cfg.pool, "UNet")
        check_pool(vae_specs, cfg.pool, "VAE")
    except ValueError as err:
        raise SampleInputError(str(err)) from None
    capture = Capture(unet=unet_specs, vae=vae_specs, pool=cfg.pool, halves=cfg.halves, exponents=True)
    model.scheduler.set_timesteps(cfg.steps)
    timesteps = [int(t) for t in model.scheduler.timesteps]
    side = cfg.resolution // model.vae_scale_factor
    layout = store.StoreLayout(
        trajectories=cfg.trajectories,
        timesteps=timesteps,
        halves=halves,
        unet=unet_specs,
        vae=vae_specs,
        pool=cfg.pool,
        resolution=cfg.resolution,
        latent_shape=(model.latent_channels, side, side),
    )
    if workers.main:
        _check_space(out, root, layout, force)

    # 4. Create the store (process 0 alone), with the batch size it keeps for every resume.
    workers.barrier()  # every process has read the store before process 0 may replace it
    if root is None and workers.main:
        batch_size = batching.resolve_batch_size(
            cfg.batch_size, model.device, cap=len(plan), what="sample.batch_size",
            run=lambda b: sample(
                model, [plan[0].prompt] * b, [plan[0].seed] * b, resolution=cfg.resolution, steps=1,
                guidance=cfg.guidance, eta=cfg.eta, capture=capture, decode=cfg.decode,
            ),
        )  # fmt: skip
        attrs = dict(
            fingerprint=key.digest,
            key_record=key.record,  # what the key is made of: a later change is named
            package_version=__version__,
            model=params.model.id,
            dtype=str(model.dtype).removeprefix("torch."),
            # diffusers' _use_default_values is a set listed in hash order, which differs between processes
            scheduler={k: v for k, v in model.scheduler.config.items() if k != "_use_default_values"},
            guidance=cfg.guidance,
            eta=cfg.eta,
            steps=cfg.steps,
            resolution=cfg.resolution,
            pool=cfg.pool,
            capture=cfg.capture,
            decode=cfg.decode,
            unet_layers=[vars(s) for s in unet_specs],
            vae_layers=[vars(s) for s in vae_specs],
            prompts=unique_prompts,
            classes=classes,
            batch_size=batch_size,  # the batch plan (resolved when sample.batch_size is auto): a resume keeps it
        )
        root = store.create(out, layout, attrs, overwrite=True)
        root["seeds"][:] = np.array([t.seed for t in plan], dtype=np.int64)
        root["labels"][:] = np.array([classes.index(t.label) for t in plan], dtype=np.int64)
        root["prompt_ids"][:] = np.array([unique_prompts.index(t.prompt) for t in plan], dtype=np.int64)
    workers.barrier()  # the store exists
    if root is None:
        root = store.open_store(out, mode="r+")

    # 5. Plan the batches still to do.
    done = store.complete_mask(root)
    # Batches are fixed blocks of the plan, so a resumed run with the same batch size denoises exactly
    # the batches an uninterrupted run would (bit-identical results), and writes only the missing
    # trajectories. With `auto` the block size is the one the probe chose when the store was created.
    batch_size = _planned_batch_size(root, cfg.batch_size)
    batches = [plan[i : i + batch_size] for i in range(0, len(plan), batch_size)]
    # Each process takes a contiguous share of the unfinished batches and writes only those trajectories.
    todo = workers.share([b for b in batches if not all(done[t.index] for t in b)])
    if done.all():
        log.info("%s is complete (%d trajectories); nothing to do", out, len(done))
    progress = progress and workers.main
    missing = sum(not done[t.index] for b in todo for t in b)
    if workers.world > 1:
        log.info("worker %d of %d takes %d trajectories", workers.rank, workers.world, missing)
    # 6. Denoise each batch and write its unfinished trajectories (a trajectory's completion flag
    #    is written after its arrays, so a killed run leaves nothing that looks finished).
    bar = tqdm(total=missing, desc="trajectories", unit="traj", disable=not progress or not missing)
    halving = batching.Halving(batch_size, model.device, "sample")  # out of memory: the block is redone in halves

    def denoise(model, batch):
        return sample(
            model,
            [t.prompt for t in batch],
            [t.seed for t in batch],
            resolution=cfg.resolution,
            steps=cfg.steps,
            guidance=cfg.guidance,
            eta=cfg.eta,
            capture=capture,
            decode=cfg.decode,
            progress=progress,
        )

    failed = []  # (trajectory, array) of the rows held back for a NaN or an infinite value
    with store.BatchWriter(root, background=model.device.type != "cpu") as writer:
        for block in todo:
            for batch, result in halving.chunks(block, lambda batch: denoise(model, batch)):
                keep = [b for b, t in enumerate(batch) if not done[t.index]]
                failed += _write_finite(writer, [batch[b] for b in keep], result, keep)
                bar.update(len(keep))
    bar.close()
    if failed:
        _retry_in_float32(params, model, root, out, failed, denoise)
    workers.barrier()  # every process has written its share before the store is consolidated
    if workers.main:
        diskspace.record_projection(root, out, "trajectories")  # measured on the store's own chunks
        store.finalize(root, out)
    return out

