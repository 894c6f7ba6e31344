"""Do diffsketch's thread settings hold up when another process keeps a core busy?

One competing busy process (a pure-Python loop, one core) runs throughout. Two workloads:

    train     one smoke training step (``Trainer.step``: the tiny model, 128 px, 50 DDIM steps,
              13 representative timesteps, tiny CLIP, random LPIPS)
    student   one student batch through the extractor (``SketchExtractor``, PyTorch fp32, the
              smoke student's size, 8 images of 256 x 256)

each under these thread settings, every one in a fresh process (the OpenMP wait policy is read
once, when torch loads):

    auto           ``threads: auto``, the default: as many threads as the cores this process may
                   use, idle threads sleep (what every diffsketch command does)
    1, 2, ...      ``threads: N`` for every N up to the cores, idle threads sleep
    torch-default  no diffsketch setting at all: PyTorch's own pool (one thread per core) with
                   GNU OpenMP's default spinning wait (what a plain PyTorch program gets)

Variants run interleaved, in rounds with the order reversed every round; each process times a
warm-up and then ``--repeats`` steps, and is stopped after ``--timeout`` seconds (then shown as
stopped, and left out of the best). It prints each process as it ends, then the medians and the
ratio of auto to the best fixed setting (the best of the numbers and torch-default). Target: at
most 1.5.

Run it (offline, from the repository root): HF_HUB_OFFLINE=1 python benchmarks/contention.py
[--repeats N] [--rounds N] [--timeout S] [--only train|student] [--variants auto,1,2,torch-default]
[--no-competitor]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TARGET = 1.5


def _child(variant: str, workload: str, repeats: int) -> None:
    """Set the threads as ``variant`` says (before torch loads), build ``workload``, print its step times as JSON."""
    if variant != "torch-default":
        from diffsketch.core.threads import apply_threads, sleep_when_idle

        sleep_when_idle()
    import torch

    count = apply_threads(variant) if variant != "torch-default" else torch.get_num_threads()
    step = _train_step() if workload == "train" else _student_batch()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"threads": count, "times": times}))


def _train_step():
    import torch

    from diffsketch.core.params import parse_params
    from diffsketch.diffusion import load_model, unet_layers, vae_layers
    from diffsketch.training import SketchLoss, Trainer, build_example, load_clip, load_lpips
    from diffsketch.training.prior import fit_prior

    params = parse_params(
        {
            "model": {"id": "tiny", "device": "cpu"},
            "sample": {"steps": 50, "resolution": 128},
            "example": {"image": None, "sketch": "xdog"},
            "losses": {"clip_model": "tiny", "lpips_net": "random"},
            "train": {"cdst_horizon": 30},
        }
    )
    model = load_model(params.model)
    indices = [round(i * 49 / 12) for i in range(13)]
    unet_specs = unet_layers(model.unet.config, 128, model.vae_scale_factor, params.sample.capture)
    vae_specs = vae_layers(model.vae.config, 128)
    hidden = model.text_encoder.config.hidden_size
    prior = fit_prior(torch.randn(40, 77, hidden, generator=torch.Generator().manual_seed(0)), 16, meta={"model": "tiny"})
    example = build_example(model, params, unet_specs, vae_specs, indices, progress=False)
    clip, lpips = load_clip("tiny", model.device), load_lpips("random", model.device)
    loss = SketchLoss(params.losses, clip, lpips, example.image, example.sketch)
    trainer = Trainer(params, model, example, prior, loss, indices)
    iteration = iter(range(10**6))
    return lambda: trainer.step(next(iteration))


def _student_batch():
    import tempfile
    from pathlib import Path

    import torch

    from diffsketch.extractor import SketchExtractor
    from diffsketch.student import Student, StudentConfig, save_student

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="contention-"))
    save_student(Student(StudentConfig(width=16, downsamples=3, blocks=2)), folder / "student.safetensors")
    extractor = SketchExtractor.load(folder / "student.safetensors", device="cpu", backend="torch", precision="fp32")
    images = [torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    return lambda: extractor.sketch_tensors(images)


def _run(variant: str, workload: str, repeats: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    started = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", variant, "--workload", workload, "--repeats", str(repeats)],
            capture_output=True, text=True, env=env, check=False, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"  {workload} {variant}: stopped after {timeout:.0f} s", flush=True)
        return {"threads": None, "times": [timeout] * repeats, "stopped": True}
    if out.returncode != 0:
        raise SystemExit(f"{variant} / {workload} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {workload} {variant} ({result['threads']} threads): " + " ".join(f"{t:.2f}" for t in result["times"])
          + f" s per step ({time.perf_counter() - started:.0f} s with set-up)", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per variant, interleaved")
    parser.add_argument("--only", choices=["train", "student", "all"], default="all")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one process may take")
    parser.add_argument("--variants", help="comma-separated, e.g. auto,1,2 (default: auto, 1 .. cores, torch-default)")
    parser.add_argument("--no-competitor", dest="competitor", action="store_false", help="run without the busy process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.workload, args.repeats)
        return

    from diffsketch.core.threads import available_cores

    cores = available_cores()
    variants = args.variants.split(",") if args.variants else ["auto", *map(str, range(1, cores + 1)), "torch-default"]
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.competitor else None
    try:
        print(f"{cores} cores available, {'one busy competing process' if competitor else 'no competing process'}, "
              f"{args.rounds} rounds x {args.repeats} steps per variant; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        for workload in ("train", "student") if args.only == "all" else (args.only,):
            times: dict[str, list[float]] = {v: [] for v in variants}
            counts: dict[str, int] = {}
            stopped: set[str] = set()
            for r in range(args.rounds):
                for variant in variants if r % 2 == 0 else variants[::-1]:
                    result = _run(variant, workload, args.repeats, args.timeout)
                    times[variant] += result["times"]
                    counts[variant] = result["threads"] or counts.get(variant)
                    if result.get("stopped"):
                        stopped.add(variant)
            medians = {v: statistics.median(t) for v, t in times.items()}
            fixed = [v for v in variants if v != "auto" and v not in stopped] or [v for v in variants if v != "auto"]
            best = min(fixed, key=medians.get)
            print(f"\n== {workload}: median seconds per step (load average {os.getloadavg()[0]:.1f})")
            for v in variants:
                if v in stopped:
                    print(f"{v:>14}  stopped: set-up and {args.repeats} steps took over {args.timeout:.0f} s")
                    continue
                print(f"{v:>14} ({counts[v]} threads)  {medians[v]:8.3f} s   min {min(times[v]):8.3f} s   ratio to best {medians[v] / medians[best]:6.2f}")
            ratio = medians["auto"] / medians[best]
            verdict = "ok" if ratio <= TARGET else "ABOVE TARGET"
            print(f"{workload}: auto / best fixed ({best}) = {ratio:.2f}  (target <= {TARGET}: {verdict})")
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


if __name__ == "__main__":
    main()
