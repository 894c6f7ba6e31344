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

import hashlib
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

from diffsketch.core import DiffsketchError, DistillConfig, Params, ResultKey, __version__, batching, result_key
from diffsketch.diffusion import model_device
from diffsketch.store import zarr_store as store
from diffsketch.student.network import Student, StudentConfig, save_student
from diffsketch.student.pairs import PairsError, open_pairs
from diffsketch.training import (
    NonFiniteGuard,
    check_finite_weights,
    load_checkpoint,
    load_lpips,
    load_module,
    load_optimizer,
    module_tensors,
    open_live,
    optimizer_tensors,
    resume_point,
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


def distill_key(params: Params, sampler: PairSampler, lpips_backbone: str | None) -> ResultKey:
    """What the student's numbers depend on (:mod:`diffsketch.core.keys`): the distillation settings,
    the LPIPS network really loaded (``lpips_backbone``; None when ``distill.lpips`` is 0), and the
    pairs by identity (the pairs store's own key, which covers the generator, prior and model) with
    the train/held-out split drawn from them."""
    split = hashlib.sha256(json.dumps([sampler.train.tolist(), sampler.holdout.tolist()]).encode()).hexdigest()[:16]
    return result_key(
        {"distill": params.distill},
        resolved={"losses.lpips_net": lpips_backbone},
        inputs={"pairs": str(sampler.root.attrs.get("fingerprint")), "pairs split": split, "pairs size": str(sampler.size)},
    )


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


def _student_backward(d: Distiller, images, sketches, size: int):
    """The student's weighted loss and terms over the batch, and its gradients, from micro-batches of at
    most ``size`` items (each term's mean weighted by the micro-batch's share: every term is a mean over
    items, the student and the discriminator normalise each image alone, so this is the full batch's
    gradient up to float summation order). Returns (loss, terms, predictions)."""
    cfg, n = d.cfg, len(images)
    d.opt.zero_grad(set_to_none=True)
    loss, terms, preds = torch.zeros((), device=images.device), {}, []
    for part in batching.micro_batches(n, size):
        share = (part.stop - part.start) / n
        x, y = images[part], sketches[part]
        pred = d.student(x)
        these = {"l1": (pred - y).abs().mean()}
        if d.lpips_net is not None:
            these["lpips"] = d.lpips_net(pred.expand(-1, 3, -1, -1) * 2 - 1, y.expand(-1, 3, -1, -1) * 2 - 1).mean()
        if d.disc is not None:
            these["gan"] = ((d.disc(x, pred) - 1) ** 2).mean()
        part_loss = cfg.l1 * these["l1"] + cfg.lpips * these.get("lpips", 0.0) + cfg.gan * these.get("gan", 0.0)
        (part_loss if share == 1 else part_loss * share).backward()
        if share == 1:  # one piece: the full batch's figures as they are
            return part_loss, these, pred
        loss = loss + share * part_loss.detach()
        terms = {k: terms.get(k, 0.0) + share * v.detach() for k, v in these.items()}
        preds.append(pred.detach())
    return loss, terms, torch.cat(preds)


def _discriminator_backward(d: Distiller, images, sketches, pred, size: int) -> torch.Tensor:
    """The discriminator's least-squares loss and gradients, from micro-batches as in :func:`_student_backward`."""
    n = len(images)
    d.opt_d.zero_grad(set_to_none=True)
    total = torch.zeros((), device=images.device)
    for part in batching.micro_batches(n, size):
        share = (part.stop - part.start) / n
        x = images[part]
        d_loss = 0.5 * (((d.disc(x, sketches[part]) - 1) ** 2).mean() + (d.disc(x, pred[part].detach()) ** 2).mean())
        (d_loss if share == 1 else d_loss * share).backward()
        if share == 1:
            return d_loss
        total = total + share * d_loss.detach()
    return total


def distill_step(
    d: Distiller, images, sketches, guard: NonFiniteGuard | None = None, iteration: int = 0, halving: batching.Halving | None = None
):
    """One iteration: the student's loss (L1, LPIPS, least-squares PatchGAN) and step, then the discriminator's.

    A non-finite loss or gradient skips that network's step (``guard``, counted there). With
    ``halving`` (:class:`~diffsketch.core.batching.Halving`), a forward and backward pass that runs
    out of memory is redone in micro-batches of half the size, gradients accumulated: the same step
    up to float summation order. Returns the student's weighted loss and the terms (``l1``,
    ``lpips``, ``gan``, ``discriminator`` where present).
    """
    run = halving.run if halving is not None else (lambda work: work(len(images)))
    loss, terms, pred = run(lambda size: _student_backward(d, images, sketches, size))
    if guard is None or guard.ok(iteration, loss, d.student.parameters()):
        d.opt.step()
    if d.disc is not None:
        d_loss = run(lambda size: _discriminator_backward(d, images, sketches, pred, size))
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
    Checkpoints live in ``checkpoints/<key>`` (:func:`~diffsketch.training.resume_point`); ``overwrite``
    deletes every checkpoint there (of any settings) and starts afresh.
    Returns the last held-out evaluation."""

    cfg = params.distill
    out, live_dir = Path(out), Path(live_dir)
    folder = Path(checkpoints) if checkpoints is not None else out.parent / "distill-checkpoints"
    root = open_pairs(pairs_path)
    sampler = PairSampler(root, cfg.holdout, cfg.crop, cfg.seed)
    device = model_device(params.model.device)
    lpips_net = load_lpips(params.losses.lpips_net, device) if cfg.lpips > 0 else None
    key = distill_key(params, sampler, getattr(lpips_net, "backbone", None))
    folder, checkpoint = resume_point(folder, key, cfg.iterations, "distill", overwrite)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = Student(StudentConfig(cfg.width, cfg.downsamples, cfg.blocks)).to(device)
        disc = PatchDiscriminator().to(device) if cfg.gan > 0 else None
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
        meta = dict(key=key.digest, record=key.record, first=json.dumps(first), result=json.dumps(result), guard=guard.state())
        save_checkpoint(folder, done, tensors, meta)

    halving = batching.Halving(cfg.batch, device, "distill")  # out of memory: the step redone in micro-batches
    bar = tqdm(range(start, cfg.iterations), desc="distilling", initial=start, total=cfg.iterations, disable=not progress)
    for i in bar:
        images, sketches = (t.to(device) for t in sampler.batch(cfg.batch, gen))
        loss, terms = distill_step(Distiller(student, opt, lpips_net, disc, opt_d, cfg), images, sketches, guard, i, halving)
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
    if start >= cfg.iterations:  # resumed at the end: score the weights (the checkpoint's last score may be older)
        result = evaluate(student, sampler, device)
    live.summary["lpips_backbone"] = getattr(lpips_net, "backbone", None)  # a random fallback is visible in the metrics
    live.end()
    meta = dict(
        model=params.model.id, key=key.digest, lpips_backbone=getattr(lpips_net, "backbone", None),
        networks={**(root.attrs.get("networks") or {}), "distill_lpips": getattr(lpips_net, "backbone", None)}, pairs=int(root["complete"][:].sum()), resolution=int(sampler.size),
        iterations=cfg.iterations, holdout=result, holdout_before=first, skipped_steps=guard.skipped, version=__version__,
    )  # fmt: skip
    check_finite_weights(student, "the distilled student")
    save_student(student.cpu(), out, meta=meta)
    return result
