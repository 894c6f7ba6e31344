"""The `distill` stage: train the fast student network on the generator's (image, sketch) pairs.

The student (``diffsketch.student``) learns to map an image to its teacher sketch with
``distill.l1 * L1 + distill.lpips * LPIPS`` (LPIPS on [-1, 1] inputs; the same network choice as
training, ``losses.lpips_net``) plus, when ``distill.gan > 0``, a conditional PatchGAN term
(Pix2Pix's 70x70 discriminator on the concatenated image and sketch, least-squares loss).
Batches are random square crops (``distill.crop``) with horizontal flips. A held-out share of the
pairs (``distill.holdout``) is never trained on: every ``distill.eval_every`` iterations the
student's L1 there is logged next to that of a blank (all-paper) output, the baseline it must beat.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffsketch import __version__
from diffsketch.config import Params
from diffsketch.losses import load_lpips
from diffsketch.models import resolve_device
from diffsketch.pairs import PairsError, open_pairs
from diffsketch.student import Student, StudentConfig, save_student

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
        complete = np.flatnonzero(root["complete"][:])
        if len(complete) < 2:
            raise PairsError(f"the pairs store has {len(complete)} complete pairs; distillation needs at least 2")
        order = np.random.default_rng(seed).permutation(complete)
        n_hold = min(max(1, math.ceil(holdout * len(order))), len(order) - 1)
        self.holdout, self.train = np.sort(order[:n_hold]), np.sort(order[n_hold:])
        self.root, self.size = root, root["images"].shape[1]
        self.crop = None if crop is None or crop >= self.size else crop

    def load(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.stack([self.root["images"][int(i)] for i in indices])).permute(0, 3, 1, 2)
        sketches = torch.from_numpy(np.stack([self.root["sketches"][int(i)] for i in indices]))[:, None]
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


def run_distill(params: Params, pairs_path: str | Path, out: str | Path, live_dir: str | Path, progress: bool = True) -> dict:
    """Train the student on the pairs store; writes ``out`` (+ .json) and the dvclive folder.

    Returns the last held-out evaluation."""
    from diffsketch.training import _live

    cfg = params.distill
    root = open_pairs(pairs_path)
    sampler = PairSampler(root, cfg.holdout, cfg.crop, cfg.seed)
    device = resolve_device(params.model.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = Student(StudentConfig(cfg.width, cfg.downsamples, cfg.blocks)).to(device)
        disc = PatchDiscriminator().to(device) if cfg.gan > 0 else None
    lpips_net = load_lpips(params.losses.lpips_net, device) if cfg.lpips > 0 else None
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999)) if disc is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)

    shutil.rmtree(live_dir, ignore_errors=True)
    live = _live(Path(live_dir), resume=False)
    live.log_params(dict(pairs_train=len(sampler.train), pairs_holdout=len(sampler.holdout), lpips_backbone=getattr(lpips_net, "backbone", None)))
    first = evaluate(student, sampler, device)
    log.info("held-out L1 before training %.4f (blank output %.4f)", first["l1"], first["blank_l1"])
    result = first
    bar = tqdm(range(cfg.iterations), desc="distilling", disable=not progress)
    for i in bar:
        images, sketches = (t.to(device) for t in sampler.batch(cfg.batch, gen))
        pred = student(images)
        terms = {"l1": (pred - sketches).abs().mean()}
        if lpips_net is not None:
            terms["lpips"] = lpips_net(pred.expand(-1, 3, -1, -1) * 2 - 1, sketches.expand(-1, 3, -1, -1) * 2 - 1).mean()
        if disc is not None:
            terms["gan"] = ((disc(images, pred) - 1) ** 2).mean()
        loss = cfg.l1 * terms["l1"] + cfg.lpips * terms.get("lpips", 0.0) + cfg.gan * terms.get("gan", 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if disc is not None:
            d_loss = 0.5 * (((disc(images, sketches) - 1) ** 2).mean() + (disc(images, pred.detach()) ** 2).mean())
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            terms["discriminator"] = d_loss
        live.log_metric("train/loss", float(loss.detach()))
        for name, value in terms.items():
            live.log_metric(f"train/{name}", float(value.detach()))
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.iterations:
            result = evaluate(student, sampler, device)
            for name, value in result.items():
                live.log_metric(f"holdout/{name}", value)
            bar.set_postfix(holdout_l1=f"{result['l1']:.4f}", blank=f"{result['blank_l1']:.4f}")
        live.next_step()
    live.end()
    meta = dict(
        model=params.model.id, pairs=int(root["complete"][:].sum()), resolution=int(sampler.size),
        iterations=cfg.iterations, holdout=result, holdout_before=first, version=__version__,
    )  # fmt: skip
    save_student(student.cpu(), out, meta=meta)
    return result
