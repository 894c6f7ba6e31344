"""How much does feature capture + Zarr writing cost on top of plain Stable Diffusion sampling?

For each model this times, on the same prompts, seeds, steps and guidance:

    A (bare)  diffusers' StableDiffusionPipeline over our model's modules, output_type="np"
    B (ours)  the `sample` stage itself (diffsketch.store.collect.run_sample on the already loaded model):
              every UNet up-block ResNet and VAE decoder ResNet hooked and pooled, a fresh feature
              store created, batches written by the background writer, in a temp dir

The machine may be noisy, so after one untimed warm-up of each the runs are interleaved
(A, B, A, B, ...) and medians are reported, with the ratio B/A (target <= 1.10); minimums are
printed too, as they are less sensitive to other load on the machine. The store is
measured after each B run: MB on disk per trajectory, uncompressed MB per trajectory (the
arrays' nbytes) and their ratio.

Models:
    tiny     the random-weight tiny SD-shaped model, 128 px, 8 prompts x 20 steps in batches of 4, pool 2
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

from diffsketch.store import zarr_store as store
from diffsketch.core.params import ModelConfig
from diffsketch.store.collect import run_sample
from diffsketch.core.params import parse_params
from diffsketch.diffusion.models import load_model

TARGET = 1.10  # B/A
PROMPTS = [
    "a photo of a red bicycle leaning against a wall",
    "a watercolor painting of a lighthouse at dusk",
    "a bowl of ramen with a soft boiled egg",
    "a portrait of an old fisherman in a yellow raincoat",
    "a snowy mountain village at night",
    "a cartoon robot waving hello",
    "a green tram crossing a bridge",
    "a cozy reading corner with a lamp",
]

# name -> settings; every pool in `pools` is one B variant, all timed against the same A runs
CASES = {
    "tiny": dict(model_id="tiny", resolution=128, steps=20, guidance=7.5, prompts=8, batch_size=4, pools=[2, "full"]),
    "sd15": dict(model_id="sd15-random", resolution=512, steps=2, guidance=7.5, prompts=1, batch_size=1, pools=[8]),
}

# -----------------------------------------------------------------------------


def run_bare(pipe, prompts, resolution, steps, guidance, batch_size):
    """The diffusers pipeline over the same batches of prompts and seeds as ours."""
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generator = [torch.Generator().manual_seed(start + b) for b in range(len(batch))]
        pipe(batch, height=resolution, width=resolution, num_inference_steps=steps,
             guidance_scale=guidance, generator=generator, output_type="np")


def run_ours(model, params, path):
    """The `sample` stage itself (planning, capture, store creation, background writes), on a loaded model."""
    run_sample(params, path, overwrite=True, progress=False, model=model)
    return store.open_store(path)


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

    R, S, G, B = case["resolution"], case["steps"], case["guidance"], case["batch_size"]
    prompts = PROMPTS[: case["prompts"]]
    prompts_file = Path(tmp) / f"{name}-prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")

    def params(pool):
        sample = dict(prompts=str(prompts_file), trajectories=len(prompts), steps=S, guidance=G, resolution=R,
                      pool=pool, batch_size=B, seed=0)
        return parse_params({"model": {"id": case["model_id"], "device": "cpu"}, "sample": sample})

    times = {"A": []} | {pool: [] for pool in case["pools"]}
    sizes = {}
    for rep in range(repeats + 1):  # rep 0 is the warm-up
        dt, _ = timed(run_bare, pipe, prompts, R, S, G, B)
        line = [f"A {dt:7.2f}s"]
        if rep:
            times["A"].append(dt)
        for pool in case["pools"]:
            path = Path(tmp) / f"{name}-pool{pool}.zarr"
            dt, root = timed(run_ours, model, params(pool), path)
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
