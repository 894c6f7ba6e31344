"""How much does feature capture + Zarr writing cost on top of plain Stable Diffusion sampling?

For each model this times, on the same prompts, seeds, steps and guidance:

    A (bare)  diffusers' StableDiffusionPipeline over our model's modules, output_type="np"
    B (ours)  diffsketch.sampling.sample(...) with every UNet up-block ResNet and every VAE decoder
              ResNet hooked and pooled, then a fresh feature store (diffsketch.store.create) and
              one diffsketch.store.write_trajectory per trajectory, in a temp dir

The machine may be noisy, so after one untimed warm-up of each the runs are interleaved
(A, B, A, B, ...) and medians are reported, with the ratio B/A (target <= 1.10); minimums are
printed too, as they are less sensitive to other load on the machine. The store is
measured after each B run: MB on disk per trajectory, uncompressed MB per trajectory (the
arrays' nbytes) and their ratio.

Models:
    tiny     the random-weight tiny SD-shaped model, 128 px, 2 prompts x 20 steps, pool 2
             (and pool 'full' as an extra B line against the same A runs)
    sd15     full-size SD 1.5 with random weights, 512 px, 1 prompt x 2 steps, pool 8
             (about 4 GB of RAM and up to a minute or two per run on a small CPU)

Run it (CPU, offline):

    HF_HUB_OFFLINE=1 python benchmarks/capture_overhead.py [--only tiny|sd15|all] [--repeats N]
"""

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffsketch import store
from diffsketch.config import ModelConfig
from diffsketch.features import check_pool, unet_layers, vae_layers
from diffsketch.models import load_model
from diffsketch.sampling import sample

TARGET = 1.10  # B/A
PROMPTS = ["a photo of a red bicycle leaning against a wall", "a watercolor painting of a lighthouse at dusk"]

# name -> settings; every pool in `pools` is one B variant, all timed against the same A runs
CASES = {
    "tiny": dict(model_id="tiny", resolution=128, steps=20, guidance=7.5, prompts=2, pools=[2, "full"]),
    "sd15": dict(model_id="sd15-random", resolution=512, steps=2, guidance=7.5, prompts=1, pools=[8]),
}

# -----------------------------------------------------------------------------


def run_bare(pipe, prompts, seeds, resolution, steps, guidance):
    generator = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompts, height=resolution, width=resolution, num_inference_steps=steps,
               guidance_scale=guidance, generator=generator, output_type="np")
    return out.images


def run_ours(model, prompts, seeds, resolution, steps, guidance, pool, unet_specs, vae_specs, path):
    """Sample with capture, then write every trajectory into a fresh store at `path`."""
    result = sample(model, prompts, seeds, resolution, steps, guidance, 0.0, unet_specs, vae_specs, pool, "cond")
    side = resolution // model.vae_scale_factor
    layout = store.StoreLayout(
        trajectories=len(prompts),
        timesteps=result.timesteps,
        halves=["cond"],
        unet=unet_specs,
        vae=vae_specs,
        pool=pool,
        resolution=resolution,
        latent_shape=(model.latent_channels, side, side),
    )
    root = store.create(path, layout, dict(fingerprint="benchmark", pool=pool), overwrite=True)
    images = result.images_uint8()
    for b in range(len(prompts)):
        store.write_trajectory(
            root, b,
            {name: x[b] for name, x in result.unet.items()},
            {name: x[b] for name, x in result.vae.items()},
            images[b], result.noise[b], result.latents[b],
        )  # fmt: skip
    return root


def store_sizes(root, path, trajectories):
    """(MB on disk per trajectory, uncompressed MB per trajectory)."""
    arrays = [a for _, a in root.arrays()]
    for group in ("unet", "vae"):
        arrays += [a for _, a in root[group].arrays()]
    logical = sum(a.nbytes for a in arrays)
    return store.disk_bytes(path) / trajectories / 1e6, logical / trajectories / 1e6


def timed(fn, *args):
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def bench(name, case, repeats, tmp):
    print(f"\n== {name}: {case['model_id']}, {case['resolution']} px, {case['prompts']} prompt(s) x "
          f"{case['steps']} steps, guidance {case['guidance']}, {repeats} repeats (+1 warm-up) ==", flush=True)
    t0 = time.perf_counter()
    model = load_model(ModelConfig(id=case["model_id"], device="cpu"))
    pipe = model.as_pipeline()
    pipe.set_progress_bar_config(disable=True)
    print(f"loaded in {time.perf_counter() - t0:.1f} s, torch threads {torch.get_num_threads()}", flush=True)

    R, S, G = case["resolution"], case["steps"], case["guidance"]
    prompts = PROMPTS[: case["prompts"]]
    seeds = list(range(len(prompts)))
    unet_specs = unet_layers(model.unet.config, R, model.vae_scale_factor)
    vae_specs = vae_layers(model.vae.config, R)
    for pool in case["pools"]:
        check_pool(unet_specs, pool, "UNet")
        check_pool(vae_specs, pool, "VAE")

    times = {"A": []} | {pool: [] for pool in case["pools"]}
    sizes = {}
    for rep in range(repeats + 1):  # rep 0 is the warm-up
        dt, _ = timed(run_bare, pipe, prompts, seeds, R, S, G)
        line = [f"A {dt:7.2f}s"]
        if rep:
            times["A"].append(dt)
        for pool in case["pools"]:
            path = Path(tmp) / f"{name}-pool{pool}.zarr"
            dt, root = timed(run_ours, model, prompts, seeds, R, S, G, pool, unet_specs, vae_specs, path)
            line.append(f"B[pool {pool}] {dt:7.2f}s")
            if rep:
                times[pool].append(dt)
            sizes[pool] = store_sizes(root, path, len(prompts))
            shutil.rmtree(path)
        print(f"  {'warm-up' if rep == 0 else f'rep {rep}':>7}: " + "  ".join(line), flush=True)

    a, a_min = statistics.median(times["A"]), min(times["A"])
    print(f"{name}: median A (bare pipeline) {a:.3f} s (min {a_min:.3f} s)")
    for pool in case["pools"]:
        b, b_min = statistics.median(times[pool]), min(times[pool])
        disk, raw = sizes[pool]
        verdict = "PASS" if b / a <= TARGET else "ABOVE TARGET"
        print(f"{name} pool={pool}: median B (ours) {b:.3f} s (min {b_min:.3f} s) | B/A {b / a:.3f} "
              f"({verdict}, target <= {TARGET:.2f}; min/min {b_min / a_min:.3f}) | "
              f"{disk:.3f} MB/traj on disk, {raw:.3f} MB/traj uncompressed, compression {raw / disk:.2f}x")
    del pipe, model
    gc.collect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["tiny", "sd15", "all"], default="all", help="which model(s) to time")
    parser.add_argument("--repeats", type=int, default=7, help="timed A/B pairs for the tiny model")
    parser.add_argument("--sd15-repeats", type=int, default=2, help="timed A/B pairs for sd15-random (slow)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffsketch-bench-") as tmp:
        if args.only in ("tiny", "all"):
            bench("tiny", CASES["tiny"], args.repeats, tmp)
        if args.only in ("sd15", "all"):
            bench("sd15", CASES["sd15"], args.sd15_repeats, tmp)
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
