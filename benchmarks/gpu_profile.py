"""The paper profile's stages on one GPU, measured in one run, against the bare diffusers pipeline.

With SD 1.5's architecture and random weights (``model.id: sd15-random``; speed does not depend
on the weights) at 512 px and 50 DDIM steps, fp16, it measures, after an untimed warm-up of each
(which is where ``torch.compile`` compiles; its time is printed apart):

    anchor      diffusers' StableDiffusionPipeline, batch 1, eager, fp16: seconds per image
    anchor+c    the same pipeline with its UNet torch.compile'd
    sample      our `sample` stage (diffsketch.store.collect.run_sample: capture, pooling, Zarr writes),
                batch_size auto, per trajectory
    train       one training iteration (diffsketch.training.trainer.Trainer.step: sampling with
                full-resolution capture at 13 timesteps, generator, the five losses with ViT-B-32
                and AlexNet-shaped LPIPS at random weights, backward, Adam)
    pairs       our `pairs` stage (diffsketch.student.pairs.run_pairs) at the auto batch, per pair
    student     the paper-size student at 512x512, fp16, channels-last, batch 1 and the best batch:
                images per second
    distill     one distillation iteration at the paper preset (batch, crop, L1 + LPIPS + PatchGAN,
                both Adam steps)

and prints every figure, its ratio to the anchor, the peak GPU memory of each part, and the wall
time of each paper-profile stage projected from the paper preset's counts (presets/paper.yaml:
trajectories, iterations, pairs, distillation iterations), and of the whole profile. Designed to
finish within 8 minutes on one H100-class GPU, model building and compilation included.

``--smoke`` runs the same code on the CPU with the tiny model (64 px, 4 steps, 2 timesteps,
small counts, the student at 128x128, distillation batch 2 of 64x64 crops) in under 2 minutes; tests/test_gpu_profile.py runs it so the script never
rots. Its figures mean nothing.

Run it (offline): HF_HUB_OFFLINE=1 python benchmarks/gpu_profile.py [--smoke] [--compile auto|on|off] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import zarr

from diffsketch.store.collect import run_sample
from diffsketch.core.params import DistillConfig, load_params, parse_params
from diffsketch.student.distill import Distiller, PatchDiscriminator, distill_step
from diffsketch.training.example import build_example
from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.training.generator import SketchGenerator, save_generator
from diffsketch.training.losses import SketchLoss, load_clip, load_lpips
from diffsketch.diffusion.models import SDModel, apply_fast_paths, build_random, resolve_compile
from diffsketch.student.pairs import run_pairs
from diffsketch.training.prior import fit_prior
from diffsketch.student.network import Student, StudentConfig
from diffsketch.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PAPER = load_params(REPO / "presets" / "paper.yaml").model_dump(mode="json")  # read through the one schema

FULL = dict(model="sd15-random", device="cuda", dtype=torch.float16, resolution=512, steps=50, timesteps=13,
            clip="ViT-B-32:", lpips="random", sample_trajectories=32, pairs_count=16, train_repeats=3, student_batches=(1, 8, 32, 64),
            student_size=512, distill_batch=None, distill_crop=None, distill_repeats=10, anchor_repeats=3)  # fmt: skip
SMOKE = dict(model="tiny", device="cpu", dtype=torch.float32, resolution=64, steps=4, timesteps=2,
             clip="tiny", lpips="random", sample_trajectories=4, pairs_count=4, train_repeats=1, student_batches=(1, 2),
             student_size=128, distill_batch=2, distill_crop=64, distill_repeats=1, anchor_repeats=1)  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Part:
    """Times a part of the profile and keeps its peak GPU memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.result = None

    def __enter__(self):
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
        self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else float("nan")


def _model(parts: dict, setup: dict, fast: bool, compile_mode: str) -> SDModel:
    device = torch.device(setup["device"])
    parts = {k: copy.deepcopy(v) for k, v in parts.items()}
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = parts[name].to(device, setup["dtype"]).eval().requires_grad_(False)
    model = SDModel(**parts, source=setup["model"], device=device, dtype=setup["dtype"])
    return apply_fast_paths(model, compile=resolve_compile(compile_mode, device)) if fast else model


def _params(setup: dict, tmp: Path, **sections) -> object:
    paper = json.loads(json.dumps(PAPER))
    settings = {
        "model": {"id": setup["model"], "device": setup["device"]},
        "sample": {**paper["sample"], "prompts": str(REPO / "data" / "prompts"), "resolution": setup["resolution"],
                   "steps": setup["steps"], "batch_size": "auto"},
        "example": {**paper["example"], "image": None, "sketch": "xdog"},
        "losses": {**paper["losses"], "clip_model": setup["clip"], "lpips_net": setup["lpips"]},
        "train": {**paper["train"], "cdst_horizon": 10},
        "pairs": {**paper["pairs"], "batch_size": "auto"},
    }  # fmt: skip
    if setup["resolution"] < 512:
        settings["sample"]["pool"] = 1
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return parse_params(settings)


def run(setup: dict, compile_mode: str) -> dict:
    device = torch.device(setup["device"])
    res, steps = setup["resolution"], setup["steps"]
    figures: dict[str, dict] = {}
    wall = time.perf_counter()

    def note(name: str, per: float, unit: str, part: Part | None = None, **extra) -> None:
        figures[name] = dict(value=per, unit=unit, peak_mb=part.peak_mb if part else float("nan"), **extra)
        print(f"  {name:<28} {per:10.4f} {unit:<12} {'' if part is None else f'peak {part.peak_mb:8.0f} MB'}  "
              f"{' '.join(f'{k}={v}' for k, v in extra.items())}  [{time.perf_counter() - wall:6.1f} s]", flush=True)  # fmt: skip

    with torch.random.fork_rng(devices=[]):
        parts = build_random(setup["model"], 0)
    print(f"built {setup['model']} ({time.perf_counter() - wall:.1f} s); {device}, {setup['dtype']}, {res} px, {steps} steps", flush=True)

    # --- anchor: the bare diffusers pipeline, batch 1, eager; then with a compiled UNet -------------
    bare = _model(parts, setup, fast=False, compile_mode="off")
    pipe = bare.as_pipeline()
    prompt = "a photo of a horse in mud"

    def pipeline_image(seed: int) -> None:
        pipe(prompt, height=res, width=res, num_inference_steps=steps, guidance_scale=5.0,
             generator=torch.Generator().manual_seed(seed), output_type="np")  # fmt: skip

    def timed(fn, repeats: int, part: Part) -> tuple[float, float]:
        """(first call, median of the next ``repeats``) in seconds; the last call's result is in ``part.result``."""
        with part:
            t = time.perf_counter()
            part.result = fn(0)
            _sync(device)
            first = time.perf_counter() - t
            times = []
            for r in range(repeats):
                t = time.perf_counter()
                part.result = fn(r + 1)
                _sync(device)
                times.append(time.perf_counter() - t)
        return first, statistics.median(times)

    pipe.set_progress_bar_config(disable=True)
    first, anchor = timed(pipeline_image, setup["anchor_repeats"], part := Part(device))
    note("anchor s/image", anchor, "s", part)
    if resolve_compile(compile_mode, device):
        pipe.unet = torch.compile(bare.unet)
        first, value = timed(pipeline_image, setup["anchor_repeats"], part := Part(device))
        note("anchor+compile s/image", value, "s", part, compile_s=round(first - value, 1), ratio=round(value / anchor, 3))
    del pipe, bare
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- our stages, on one model with the fast paths ---------------------------------------------
    model = _model(parts, setup, fast=True, compile_mode=compile_mode)
    del parts
    tmp = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    params = _params(setup, tmp)

    # Warm-ups at batch 1 and 2 compile the static and then the dynamic-batch graphs (torch.compile
    # recompiles once with a dynamic batch dimension on the second shape), so the timed runs at the
    # auto batch compile nothing more.
    for b in (1, 2):
        with Part(device) as part:
            run_sample(_params(setup, tmp, sample={"trajectories": b, "batch_size": b}), tmp / f"warm{b}.zarr",
                       progress=False, model=model)  # fmt: skip
        note(f"sample warm-up, batch {b}", part.seconds, "s", part)
    if device.type == "cuda":  # the step loop must not synchronise with the host: count what CUDA reports
        import warnings

        from diffsketch.diffusion.sampling import ddim_loop, empty_embedding, encode_prompts, initial_noise

        cond = encode_prompts(model, [prompt])
        noise = initial_noise(model, [0], res).to(device)
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                ddim_loop(model, noise, cond, empty_embedding(model, 1), steps=steps, guidance=5.0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        print(f"  host synchronisations in a {steps}-step loop: {len(syncs)}" + (f" (first: {syncs[0]})" if syncs else ""))
        figures["loop host syncs"] = dict(value=len(syncs), unit="syncs")
    n = setup["sample_trajectories"]
    with Part(device) as part:  # batch_size auto: the probe picks the batch (at most n) and the store records it
        run_sample(_params(setup, tmp, sample={"trajectories": n}), tmp / "sample.zarr", progress=False, model=model)
    chosen = int(zarr.open_group(str(tmp / "sample.zarr"), mode="r").attrs["batch_size"])
    per_traj = part.seconds / n
    note("sample s/trajectory", per_traj, "s", part, batch=chosen, trajectories=n, ratio=round(per_traj / anchor, 3))

    # --- one training iteration -------------------------------------------------------------------
    k = setup["timesteps"]
    indices = sorted({round(i * (steps - 1) / max(k - 1, 1)) for i in range(k)})
    unet_specs = unet_layers(model.unet.config, res, model.vae_scale_factor, params.sample.capture)
    vae_specs = vae_layers(model.vae.config, res)
    hidden = model.text_encoder.config.hidden_size
    prior = fit_prior(torch.randn(40, 77, hidden, generator=torch.Generator().manual_seed(0)), 16, meta={"model": setup["model"]})
    example = build_example(model, params, unet_specs, vae_specs, indices, progress=False)
    loss = SketchLoss(params.losses, load_clip(setup["clip"], device), load_lpips(setup["lpips"], device), example.image, example.sketch)
    trainer = Trainer(params, model, example, prior, loss.to(device), indices)
    first, per_iter = timed(trainer.step, setup["train_repeats"], part := Part(device))
    record = part.result.metrics  # the last TrainStep
    share = (record["time_generator"] + record["time_losses"]) / record["time_sampling"]
    note("train s/iteration", per_iter, "s", part, precision=trainer.precision, generator_losses_share=round(share, 3),
         compile_s=round(first - per_iter, 1), ratio=round(per_iter / anchor, 3))  # fmt: skip
    generator = trainer.generator
    del trainer, loss, example
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- pairs ------------------------------------------------------------------------------------
    gen_path = tmp / "generator.safetensors"
    meta = dict(model=setup["model"], resolution=res, steps=steps, guidance=params.sample.guidance,
                capture=params.sample.capture, decode=params.sample.decode, ddim_indices=indices)  # fmt: skip
    save_generator(generator.cpu(), gen_path, meta=meta)
    prior.save(tmp / "prior.safetensors")
    pair_args = (gen_path, tmp / "prior.safetensors")
    for b in (1, 2):  # warm-ups: the generator's and the batch shapes' compilation
        with Part(device) as part:
            run_pairs(_params(setup, tmp, pairs={"count": 2, "batch_size": b}), *pair_args, tmp / f"warm_pairs{b}.zarr",
                      progress=False, model=model)  # fmt: skip
        note(f"pairs warm-up, batch {b}", part.seconds, "s", part)
    count = setup["pairs_count"]
    with Part(device) as part:  # batch_size auto (at most `count`), recorded in the store
        run_pairs(_params(setup, tmp, pairs={"count": count}), *pair_args, tmp / "pairs.zarr", progress=False, model=model)
    batch = int(zarr.open_group(str(tmp / "pairs.zarr"), mode="r").attrs["batch_size"])
    per_pair = part.seconds / count
    note("pairs s/pair", per_pair, "s", part, batch=batch, pairs=count, ratio=round(per_pair / anchor, 3))
    del model, generator
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # --- the student ------------------------------------------------------------------------------
    d = PAPER["distill"]
    sdtype = torch.float16 if device.type == "cuda" else torch.float32
    student = Student(StudentConfig(d["width"], d["downsamples"], d["blocks"])).to(device, sdtype).eval()
    student = student.to(memory_format=torch.channels_last)
    best = (0.0, 1)
    for b in setup["student_batches"]:
        side = setup["student_size"]
        x = torch.rand(b, 3, side, side, device=device, dtype=sdtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            first, per_batch = timed(lambda _: student(x), 5 if device.type == "cuda" else 1, part := Part(device))
        rate = b / per_batch
        note(f"student img/s, batch {b}", rate, "img/s", part, side=side)
        best = max(best, (rate, b))
    figures["student best"] = dict(value=best[0], unit="img/s", batch=best[1])

    # --- one distillation iteration at the paper preset -------------------------------------------
    crop, dbatch = setup["distill_crop"] or d["crop"], setup["distill_batch"] or d["batch"]
    student = Student(StudentConfig(d["width"], d["downsamples"], d["blocks"])).to(device)
    disc = PatchDiscriminator().to(device) if d["gan"] > 0 else None
    lpips_net = load_lpips(setup["lpips"], device)
    opt = torch.optim.Adam(student.parameters(), lr=d["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=d["lr"], betas=(0.5, 0.999)) if disc is not None else None
    images, sketches = torch.rand(dbatch, 3, crop, crop, device=device), torch.rand(dbatch, 1, crop, crop, device=device)

    step = Distiller(student, opt, lpips_net, disc, opt_d, DistillConfig(**d))

    def distill_iteration(_):  # the stage's step (diffsketch.student.distill.distill_step), and its per-iteration log
        loss, _terms = distill_step(step, images, sketches)
        float(loss.detach())

    first, per_distill = timed(distill_iteration, setup["distill_repeats"], part := Part(device))
    note("distill s/iteration", per_distill, "s", part, batch=dbatch, crop=crop)
    figures["wall_s"] = dict(value=time.perf_counter() - wall, unit="s")
    return figures


def projection(figures: dict) -> dict:
    """Wall time of each paper-profile stage from the paper preset's counts (analysis and the
    evaluation run on the CPU side and are not part of this profile)."""
    stages = {
        "sample": (PAPER["sample"]["trajectories"], figures["sample s/trajectory"]["value"]),
        "train": (PAPER["train"]["iterations"], figures["train s/iteration"]["value"]),
        "pairs": (PAPER["pairs"]["count"], figures["pairs s/pair"]["value"]),
        "distill": (PAPER["distill"]["iterations"], figures["distill s/iteration"]["value"]),
    }
    out = {name: dict(count=n, each_s=each, total_s=n * each) for name, (n, each) in stages.items()}
    out["whole profile"] = dict(count=None, each_s=None, total_s=sum(v["total_s"] for v in out.values()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU with the tiny model")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="model.compile for our model and the anchor+compile row")
    parser.add_argument("--json", type=Path, help="also write the figures and the projection here")
    args = parser.parse_args()
    setup = SMOKE if args.smoke else FULL
    if setup["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU, or pass --smoke for the CPU check")
    if setup["device"] == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    figures = run(setup, args.compile)
    proj = projection(figures)
    print(f"\nprojected wall time of the paper profile ({'meaningless: smoke run' if args.smoke else setup['model']}):")
    for name, row in proj.items():
        each = f"{row['count']:>6} x {row['each_s']:.4f} s" if row["count"] else " " * 19
        print(f"  {name:<14} {each}  = {row['total_s'] / 3600:8.3f} h")
    print(f"profile run took {figures['wall_s']['value']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(dict(setup={k: str(v) for k, v in setup.items()}, figures=figures, projection=proj), indent=2))


if __name__ == "__main__":
    main()
