"""The `distill` stage: train the fast student network on the generator's (image, sketch) pairs.

The student (``diffsketch.student.network``) learns to map an image to its teacher sketch with
``distill.l1 * L1 + distill.lpips * LPIPS`` (LPIPS on [-1, 1] inputs; the same network choice as
training, ``losses.lpips_net``) plus, when ``distill.gan > 0``, a conditional PatchGAN term
(Pix2Pix's 70x70 discriminator on the concatenated image and sketch, least-squares loss).
Batches are random square crops (``distill.crop``) with horizontal flips. A held-out share of the
pairs (``distill.holdout``) is never trained on: every ``distill.eval_every`` iterations the
student's L1 there is logged next to that of a blank (all-paper) output, the baseline it must beat.

Every ``distill.checkpoint_every`` iterations a checkpoint (student, discriminator, both Adam
states, the batch generator's state that fixes the data order and crops, torch's global random
state, the last evaluation) is written atomically (:mod:`diffsketch.training.checkpoint`); a run killed at
any point and rerun resumes from it and ends with the weights and dvclive rows of an uninterrupted
run. Steps with a non-finite loss or gradient are skipped (``distill.max_skips`` in a row stop) and counted: the
dvclive metric ``train/skipped_steps`` (a running count; its last value, the total, in ``metrics.json``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffsketch.core import DiffsketchError, DistillConfig, Params, __version__, fingerprint
from diffsketch.diffusion import model_device
from diffsketch.store import zarr_store as store
from diffsketch.student.network import Student, StudentConfig, save_student
from diffsketch.student.pairs import PairsError, open_pairs
from diffsketch.training import (
    NonFiniteGuard,
    check_finite_weights,
    checkpoint_meta,
    latest_checkpoint,
    load_checkpoint,
    load_lpips,
    load_module,
    load_optimizer,
    module_tensors,
    open_live,
    optimizer_tensors,
    rng_tensor,
    save_checkpoint,
    trim_live,
)

log = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """Pix2Pix's conditional PatchGAN: (image, sketch) -> a grid of real/fake scores (70x70 patches)."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(4, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(c, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out, affine=True), nn.LeakyReLU(0.2, inplace=True)]
            c = out
        blocks.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * 2 - 1, sketch * 2 - 1], dim=1))


class PairSampler:
    """Random crops of the complete pairs, split into training and held-out indices."""

    def __init__(self, root, holdout: float, crop: int | None, seed: int):
        complete = np.flatnonzero(store.complete_mask(root))
        if len(complete) < 2:
            raise PairsError(f"the pairs store has {len(complete)} complete pairs; distillation needs at least 2")
        order = np.random.default_rng(seed).permutation(complete)
        n_hold = min(max(1, math.ceil(holdout * len(order))), len(order) - 1)
        self.holdout, self.train = np.sort(order[:n_hold]), np.sort(order[n_hold:])
        self.root, self.size = root, root["images"].shape[1]
        self.crop = None if crop is None or crop >= self.size else crop

    def load(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        # a damaged chunk: a message naming the store, the pair and the `inspect --verify` command
        images = torch.from_numpy(np.stack([store.read(self.root["images"], int(i)) for i in indices])).permute(0, 3, 1, 2)
        sketches = torch.from_numpy(np.stack([store.read(self.root["sketches"], int(i)) for i in indices]))[:, None]
        return images.float() / 255, sketches.float() / 255

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = self.train[torch.randint(len(self.train), (size,), generator=generator).numpy()]
        images, sketches = self.load(pick)
        if self.crop is not None:
            top, left = (int(v) for v in torch.randint(self.size - self.crop + 1, (2,), generator=generator))
            images = images[..., top : top + self.crop, left : left + self.crop]
            sketches = sketches[..., top : top + self.crop, left : left + self.crop]
        if torch.rand((), generator=generator) < 0.5:
            images, sketches = images.flip(-1), sketches.flip(-1)
        return images, sketches


@torch.no_grad()
def evaluate(student: Student, sampler: PairSampler, device, batch: int = 8) -> dict:
    """Mean L1 of the student and of a blank (white) output on the held-out pairs."""
    student.eval()
    total = blank = 0.0
    for start in range(0, len(sampler.holdout), batch):
        images, sketches = sampler.load(sampler.holdout[start : start + batch])
        pred = student(images.to(device)).cpu()
        total += (pred - sketches).abs().mean(dim=(1, 2, 3)).sum().item()
        blank += (1 - sketches).abs().mean(dim=(1, 2, 3)).sum().item()
    student.train()
    n = len(sampler.holdout)
    return dict(l1=total / n, blank_l1=blank / n, ratio=(total / max(blank, 1e-12)))


class DistillError(DiffsketchError, ValueError):
    """The distillation cannot start or resume as asked; the message names the fix."""


NONFINITE_CAUSES = (
    "a learning rate too high (lower distill.lr), a GAN weight that destabilises training (lower distill.gan), "
    "or damaged pairs (run `diffsketch inspect --verify` on the pairs store)"
)


def _distill_key(params: Params, sampler: PairSampler) -> str:
    """What the checkpoints depend on; iterations and logging/checkpoint intervals may change on resume."""
    cfg = params.distill.model_copy(update={"iterations": 0, "eval_every": 0, "checkpoint_every": 0, "max_skips": 0})
    extra = dict(model=params.model.id, lpips=params.losses.lpips_net, train=sampler.train.tolist(),
                 holdout=sampler.holdout.tolist(), size=int(sampler.size),
                 pairs=sampler.root.attrs.get("fingerprint"))  # the generator, prior and settings that made the pairs  # fmt: skip
    return fingerprint(cfg, extra=extra)


@dataclass
class Distiller:
    """What one distillation step updates: the student and its optimiser, the frozen LPIPS network (or
    None), the PatchGAN discriminator and its optimiser (or None: distill.gan is 0), and the loss weights."""

    student: torch.nn.Module
    opt: torch.optim.Optimizer
    lpips_net: torch.nn.Module | None
    disc: torch.nn.Module | None
    opt_d: torch.optim.Optimizer | None
    cfg: DistillConfig


def distill_step(d: Distiller, images, sketches, guard: NonFiniteGuard | None = None, iteration: int = 0):
    """One iteration: the student's loss (L1, LPIPS, least-squares PatchGAN) and step, then the discriminator's.

    A non-finite loss or gradient skips that network's step (``guard``, counted there). Returns the
    student's weighted loss and the terms (``l1``, ``lpips``, ``gan``, ``discriminator`` where present).
    """
    cfg = d.cfg
    pred = d.student(images)
    terms = {"l1": (pred - sketches).abs().mean()}
    if d.lpips_net is not None:
        terms["lpips"] = d.lpips_net(pred.expand(-1, 3, -1, -1) * 2 - 1, sketches.expand(-1, 3, -1, -1) * 2 - 1).mean()
    if d.disc is not None:
        terms["gan"] = ((d.disc(images, pred) - 1) ** 2).mean()
    loss = cfg.l1 * terms["l1"] + cfg.lpips * terms.get("lpips", 0.0) + cfg.gan * terms.get("gan", 0.0)
    d.opt.zero_grad(set_to_none=True)
    loss.backward()
    if guard is None or guard.ok(iteration, loss, d.student.parameters()):
        d.opt.step()
    if d.disc is not None:
        d_loss = 0.5 * (((d.disc(images, sketches) - 1) ** 2).mean() + (d.disc(images, pred.detach()) ** 2).mean())
        d.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if guard is None or guard.ok(iteration, d_loss, d.disc.parameters()):
            d.opt_d.step()
        terms["discriminator"] = d_loss
    return loss, terms


def run_distill(
    params: Params,
    pairs_path: str | Path,
    out: str | Path,
    live_dir: str | Path,
    progress: bool = True,
    checkpoints: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Train (or resume) the student on the pairs store; writes ``out`` (+ .json) and the dvclive folder.

    ``checkpoints``: folder of resumable checkpoints (default: ``distill-checkpoints`` next to ``out``).
    ``overwrite``: checkpoints made with other settings are deleted instead of refused.
    Returns the last held-out evaluation."""

    cfg = params.distill
    out, live_dir = Path(out), Path(live_dir)
    folder = Path(checkpoints) if checkpoints is not None else out.parent / "distill-checkpoints"
    root = open_pairs(pairs_path)
    sampler = PairSampler(root, cfg.holdout, cfg.crop, cfg.seed)
    key = _distill_key(params, sampler)
    checkpoint = latest_checkpoint(folder)
    if checkpoint is not None and checkpoint_meta(checkpoint).get("key") != key:
        if not overwrite:
            raise DistillError(
                f"{folder} holds checkpoints of a distillation with other settings or pairs; pass --overwrite (the DVC "
                "stage does) to start over, or restore the settings to resume"
            )
        log.info("settings changed: discarding the checkpoints in %s", folder)
        shutil.rmtree(folder)
        checkpoint = None
    device = model_device(params.model.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = Student(StudentConfig(cfg.width, cfg.downsamples, cfg.blocks)).to(device)
        disc = PatchDiscriminator().to(device) if cfg.gan > 0 else None
    lpips_net = load_lpips(params.losses.lpips_net, device) if cfg.lpips > 0 else None
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999)) if disc is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    guard = NonFiniteGuard(cfg.max_skips, "distill", NONFINITE_CAUSES)

    start = 0
    if checkpoint is not None:
        tensors, meta = load_checkpoint(checkpoint, device)
        load_module(student, tensors, "student")
        load_optimizer(opt, tensors, "optimizer")
        if disc is not None:
            load_module(disc, tensors, "discriminator")
            load_optimizer(opt_d, tensors, "optimizer_d")
        gen.set_state(tensors["rng.batches"].cpu())
        torch.set_rng_state(tensors["rng.torch"].cpu())
        first, result = json.loads(meta["first"]), json.loads(meta["result"])
        guard.load(meta.get("guard"))
        start = int(meta["iteration"])
        log.info("resuming from %s (iteration %d)", checkpoint, start)
        trim_live(live_dir, start)
        live = open_live(live_dir, resume=True)
        live.step = start
    else:
        shutil.rmtree(live_dir, ignore_errors=True)
        live = open_live(live_dir, resume=False)
        live.log_params(dict(pairs_train=len(sampler.train), pairs_holdout=len(sampler.holdout), lpips_backbone=getattr(lpips_net, "backbone", None)))
        first = evaluate(student, sampler, device)
        result = first
    log.info("held-out L1 before training %.4f (blank output %.4f)", first["l1"], first["blank_l1"])

    def save(done: int) -> None:
        tensors = {**module_tensors("student", student), **optimizer_tensors("optimizer", opt)}
        if disc is not None:
            tensors.update(module_tensors("discriminator", disc), **optimizer_tensors("optimizer_d", opt_d))
        tensors.update({"rng.batches": rng_tensor(gen), "rng.torch": rng_tensor()})
        meta = dict(key=key, first=json.dumps(first), result=json.dumps(result), guard=guard.state())
        save_checkpoint(folder, done, tensors, meta)

    bar = tqdm(range(start, cfg.iterations), desc="distilling", initial=start, total=cfg.iterations, disable=not progress)
    for i in bar:
        images, sketches = (t.to(device) for t in sampler.batch(cfg.batch, gen))
        loss, terms = distill_step(Distiller(student, opt, lpips_net, disc, opt_d, cfg), images, sketches, guard, i)
        live.log_metric("train/loss", float(loss.detach()))
        for name, value in terms.items():
            live.log_metric(f"train/{name}", float(value.detach()))
        live.log_metric("train/skipped_steps", guard.skipped)  # the non-finite guard's running count (metrics.json: the total)
        done = i + 1
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            result = evaluate(student, sampler, device)
            for name, value in result.items():
                live.log_metric(f"holdout/{name}", value)
            bar.set_postfix(holdout_l1=f"{result['l1']:.4f}", blank=f"{result['blank_l1']:.4f}")
        live.next_step()
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            save(done)
    live.end()
    meta = dict(
        model=params.model.id, pairs=int(root["complete"][:].sum()), resolution=int(sampler.size),
        iterations=cfg.iterations, holdout=result, holdout_before=first, skipped_steps=guard.skipped, version=__version__,
    )  # fmt: skip
    check_finite_weights(student, "the distilled student")
    save_student(student.cpu(), out, meta=meta)
    return result
