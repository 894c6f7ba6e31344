"""How much faster is the distilled student than the generator pipeline it replaces?

Times, per image, on this machine (medians after a warm-up):

    student   the distilled network (random weights: speed does not depend on them) at 512x512
              and 1024x1024, batch 1, torch.inference_mode; the paper-preset size (width 32,
              3 downsamplings, 4 residual blocks) and the smoke size (16/3/2)
    xdog      the weight-free XDoG baseline (diffsketch.styles.xdog) at the same sizes
    pipeline  the non-distilled DiffSketch: a DDIM+CFG sampling with full-resolution capture at
              the representative timesteps, VAE decode with capture, and the generator, for
                tiny        128 px, 50 steps
                sd15        full-size SD 1.5 with random weights at 512 px, timed at 1 and 2 steps
                            and extrapolated to 50 (fixed cost + 50 x the per-step cost)

and prints the speed-ups pipeline / student (target at SD 1.5 size: >= 100x) and xdog / student.

Run it (offline): HF_HUB_OFFLINE=1 python benchmarks/extract_speed.py [--only student|tiny|sd15|all] [--repeats N]
"""

import argparse
import statistics
import time

import torch

from diffsketch.config import ModelConfig
from diffsketch.example import inputs_from_result
from diffsketch.features import unet_layers, vae_layers
from diffsketch.generator import SketchGenerator
from diffsketch.models import load_model
from diffsketch.sampling import encode_prompts, initial_noise, sample_conditions
from diffsketch.student import Student, StudentConfig
from diffsketch.styles import xdog

STUDENTS = {"paper": StudentConfig(32, 3, 4), "smoke": StudentConfig(16, 3, 2)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def student_times(repeats: int, device: str = "cpu") -> dict:
    out = {}
    for name, cfg in STUDENTS.items():
        model = Student(cfg).eval().to(device)
        for side in (512, 1024):
            x = torch.rand(1, 3, side, side, device=device)
            with torch.inference_mode():
                out[(name, side)] = _median(lambda: model(x), repeats)
    for side in (512, 1024):
        image = torch.rand(3, side, side)
        out[("xdog", side)] = _median(lambda: xdog(image), repeats)
    return out


def pipeline_time(model_id: str, resolution: int, steps: int, timesteps: int) -> float:
    model = load_model(ModelConfig(id=model_id))
    indices = sorted({round(i * (steps - 1) / max(timesteps - 1, 1)) for i in range(timesteps)})
    unet_specs = unet_layers(model.unet.config, resolution, model.vae_scale_factor)
    vae_specs = vae_layers(model.vae.config, resolution)
    generator = SketchGenerator(unet_specs, vae_specs, len(indices)).to(model.device).eval()
    cond = encode_prompts(model, ["a photo of a horse in mud"])

    def run():
        result = sample_conditions(
            model, cond, initial_noise(model, [0], resolution), steps, 5.0, 0.0, [0],
            unet_specs, vae_specs, pool="full", halves="both", keep=indices, on_cpu=False,
        )  # fmt: skip
        with torch.inference_mode():
            generator(inputs_from_result(result, model.device))

    run()  # warm-up
    _sync()
    t = time.perf_counter()
    run()
    _sync()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["student", "tiny", "sd15", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the student runs (the pipeline uses model.device auto)")
    args = parser.parse_args()
    s = student_times(args.repeats, args.device)
    print(f"\n== per image, student on {args.device}, xdog on the CPU, batch 1 (medians)")
    for side in (512, 1024):
        print(f"{side}x{side}: student paper-size {s[('paper', side)]:.4f} s ({1 / s[('paper', side)]:.1f} img/s), "
              f"smoke-size {s[('smoke', side)]:.4f} s, xdog {s[('xdog', side)]:.4f} s "
              f"(xdog / student {s[('xdog', side)] / s[('paper', side)]:.2f})")  # fmt: skip
    if args.only in ("tiny", "all"):
        t = pipeline_time("tiny", 128, 50, 13)
        print(f"tiny pipeline (128 px, 50 steps): {t:.3f} s/image; / student@512 (paper size) {t / s[('paper', 512)]:.1f}x")
    if args.only in ("sd15", "all"):
        t1 = pipeline_time("sd15-random", 512, 1, 1)
        t2 = pipeline_time("sd15-random", 512, 2, 2)
        per_step = max(t2 - t1, 0.0)
        t50 = t1 - per_step + 50 * per_step
        print(f"sd15 pipeline (512 px): 1 step {t1:.1f} s, 2 steps {t2:.1f} s -> 50 steps ~{t50:.0f} s/image")
        print(f"speed-up at SD 1.5 size: pipeline(50 steps) / student@512 = {t50 / s[('paper', 512)]:.0f}x (target >= 100x); "
              f"at 2 steps already {t2 / s[('paper', 512)]:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
