"""What does one training iteration cost, and how much of it is the generator and the losses?

For each model this builds the real training setup (``diffsketch.training.trainer.Trainer``: the example's
features, the tiny or real CLIP/LPIPS per ``--clip``/``--lpips``, the generator, Adam) and times,
interleaved after one untimed warm-up:

    bare      one plain DDIM+CFG sampling of a trajectory (same steps, guidance, resolution, noise
              seed as a training iteration), no hooks, plus the VAE decode
    step      one full training iteration, split into
                sampling   the same trajectory with full-resolution capture at the representative
                           timesteps (only those are kept) and VAE decoder capture
                generator  the generator on the example's and on the new features (forward)
                losses     the five loss terms, backward and the Adam step

It prints medians and ratios: generator / bare, losses / bare, (generator + losses) / bare (the
target is well under 1: the generator and losses ride on the sampling) and sampling / bare
(the cost of full-resolution capture).

Models:
    tiny     the tiny random SD model, 128 px, 50 steps, 13 representative timesteps
    sd15     full-size SD 1.5 with random weights, 512 px, 2 DDIM steps (both representative);
             about 5 GB of RAM and a minute or more per iteration on a small CPU

Run it (offline): HF_HUB_OFFLINE=1 python benchmarks/train_step.py [--only tiny|sd15|all] [--repeats N]
"""

import argparse
import gc
import statistics
import time

import torch

from diffsketch.core.params import parse_params
from diffsketch.training.example import build_example
from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.training.losses import SketchLoss, load_clip, load_lpips
from diffsketch.diffusion.models import load_model
from diffsketch.training.prior import fit_prior
from diffsketch.diffusion.sampling import Capture, initial_noise, sample_conditions
from diffsketch.training.trainer import Trainer, _seed

SETUPS = {
    "tiny": dict(model="tiny", resolution=128, steps=50, timesteps=13),
    "sd15": dict(model="sd15-random", resolution=512, steps=2, timesteps=2),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(name: str, repeats: int, clip_spec: str, lpips_net: str, precision: str = "auto") -> None:
    setup = SETUPS[name]
    params = parse_params(
        {
            "model": {"id": setup["model"]},
            "sample": {"steps": setup["steps"], "resolution": setup["resolution"]},
            "losses": {"clip_model": clip_spec, "lpips_net": lpips_net},
            "train": {"cdst_horizon": 10, "precision": precision},
        }
    )
    model = load_model(params.model)
    device = model.device
    steps, res = setup["steps"], setup["resolution"]
    indices = sorted({round(i * (steps - 1) / max(setup["timesteps"] - 1, 1)) for i in range(setup["timesteps"])})
    unet_specs = unet_layers(model.unet.config, res, model.vae_scale_factor, params.sample.capture)
    vae_specs = vae_layers(model.vae.config, res)
    hidden = model.text_encoder.config.hidden_size
    prior = fit_prior(torch.randn(40, 77, hidden, generator=torch.Generator().manual_seed(0)), 16, meta={"model": setup["model"]})
    example = build_example(model, params, unet_specs, vae_specs, indices, progress=False)
    loss = SketchLoss(params.losses, load_clip(clip_spec, device), load_lpips(lpips_net, device), example.image, example.sketch)
    trainer = Trainer(params, model, example, prior, loss.to(device), indices)

    def bare(iteration):
        seed = _seed(params, iteration, 1)
        noise = initial_noise(model, [seed], res)
        cond = example.cond
        _sync(device)
        t = time.perf_counter()
        sample_conditions(model, cond, noise, steps=steps, guidance=params.sample.guidance, eta=0.0, seeds=[seed], capture=Capture(on_cpu=False))
        _sync(device)
        return time.perf_counter() - t

    bare(0), trainer.step(0)  # warm-up
    rows = []
    for r in range(repeats):
        gc.collect()
        b = bare(r + 1)
        rec = trainer.step(r + 1).metrics
        rows.append((b, rec["time_sampling"], rec["time_generator"], rec["time_losses"]))
    med = [statistics.median(col) for col in zip(*rows)]
    b, s, g, lo = med
    print(f"\n== {name}: {setup['model']}, {res} px, {steps} steps, {len(indices)} representative timesteps, "
          f"{device}, {trainer.precision}, clip={loss.clip.name}, lpips={lpips_net}, {repeats} repeats (medians)")  # fmt: skip
    print(f"bare sampling            {b:8.3f} s")
    print(f"step: sampling+capture   {s:8.3f} s   ratio to bare {s / b:6.3f}")
    print(f"step: generator          {g:8.3f} s   ratio to bare {g / b:6.3f}")
    print(f"step: losses+backward    {lo:8.3f} s   ratio to bare {lo / b:6.3f}")
    print(f"generator + losses       {g + lo:8.3f} s   ratio to bare {(g + lo) / b:6.3f}   (target well under 1)")
    print(f"whole iteration          {s + g + lo:8.3f} s   ratio to bare {(s + g + lo) / b:6.3f}")
    del trainer, model
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["tiny", "sd15", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip", default="ViT-B-32:", help="losses.clip_model; the default is ViT-B-32 with random weights (the real cost)")
    parser.add_argument("--lpips", default="auto", help="losses.lpips_net")
    parser.add_argument("--precision", default="auto", help="train.precision: auto, fp32, bf16, fp16 (GPU)")
    parser.add_argument("--sd15-steps", type=int, default=2, help="DDIM steps for sd15 (50 on a GPU: the real cost)")
    args = parser.parse_args()
    SETUPS["sd15"].update(steps=args.sd15_steps, timesteps=min(13, args.sd15_steps))
    for name in ("tiny", "sd15") if args.only == "all" else (args.only,):
        run(name, args.repeats, args.clip, args.lpips, args.precision)


if __name__ == "__main__":
    main()
