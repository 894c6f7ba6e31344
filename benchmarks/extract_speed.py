"""How much faster is the distilled student than the generator pipeline it replaces?

Times, per image, on this machine (medians after a warm-up):

    student   the distilled network (random weights: speed does not depend on them) at 512x512
              and 1024x1024, batch 1, torch.inference_mode; the paper-preset size (width 32,
              3 downsamplings, 4 residual blocks) and the smoke size (16/3/2)
    xdog      the weight-free XDoG baseline (diffsketch.training.styles.xdog) at the same sizes
    pipeline  the non-distilled DiffSketch: a DDIM+CFG sampling with full-resolution capture at
              the representative timesteps, VAE decode with capture, and the generator, for
                tiny        128 px, 50 steps
                sd15        full-size SD 1.5 with random weights at 512 px, timed at 1 and 2 steps
                            and extrapolated to 50 (fixed cost + 50 x the per-step cost)

and prints the speed-ups pipeline / student (target at SD 1.5 size: >= 100x) and xdog / student.

``--only backends`` compares the extractor's backends (diffsketch.extractor.api) side by side at
512x512, batch 1, for the paper-size student, in interleaved rounds (each round times every
backend once, so a busy shared machine slows them alike): today's path (eager PyTorch fp32, the
Student module as distillation trains it), ``torch`` fp32 (group-norm instance norms, inference
mode), ``torch`` bf16 (+ channels-last), ``onnx`` fp32 (ONNX Runtime) and the XDoG baseline;
images/s, the ratio to today's path, and the 4 images/s target. It then checks every backend
against eager fp32 on the packaged photos (diffsketch.evaluation.data, long side 512): the max abs
difference and the worst line-pixel F-score (line = below the fp32 sketch's median, so half the
pixels are lines, matched within 1 px). The student's weights are random (speed does not depend
on them; a trained student's larger logits can make bf16 differences larger, so check yours with
``SketchExtractor.load(..., precision="fp32")`` against the default).

Run it (offline): HF_HUB_OFFLINE=1 python benchmarks/extract_speed.py [--only student|backends|tiny|sd15|all] [--repeats N]
"""

import argparse
import statistics
import time

import torch

from diffsketch.core.params import ModelConfig
from diffsketch.training.example import inputs_from_result
from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.training.generator import SketchGenerator
from diffsketch.diffusion.models import load_model
from diffsketch.diffusion.sampling import Capture, encode_prompts, initial_noise, sample_conditions
from diffsketch.student.network import Student, StudentConfig
from diffsketch.training.styles import xdog

STUDENTS = {"paper": StudentConfig(32, 3, 4), "smoke": StudentConfig(16, 3, 2)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize(torch.device("cuda", torch.cuda.current_device()))


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


def backend_times(repeats: int, side: int = 512, threads: int | None = None) -> tuple[dict, dict]:
    """Per-image seconds for each backend (interleaved rounds) and their agreement with eager fp32 on the photos."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from diffsketch.evaluation import metrics
    from diffsketch.evaluation.data import PHOTOS
    from diffsketch.student.onnx import export_onnx
    from diffsketch.extractor.api import SketchExtractor, cpu_bf16_capable, resize_capped
    from diffsketch.student.network import save_student
    from diffsketch.core.images import read_rgb

    torch.manual_seed(0)
    model = Student(STUDENTS["paper"]).eval()
    folder = Path(tempfile.mkdtemp(prefix="extract-speed-"))
    weights = save_student(model, folder / "student.safetensors")
    export_onnx(weights, folder / "student.onnx", check=False)
    runners = {"eager fp32 (today)": lambda x: model(x)[:, 0].numpy()}
    options = {"torch fp32": ("torch", "fp32"), "onnx fp32": ("onnx", "fp32")}
    if cpu_bf16_capable():
        options["torch bf16"] = ("torch", "bf16")
    extractors = {}
    for name, (backend, precision) in options.items():
        extractors[name] = SketchExtractor.load(folder, "cpu", backend, precision=precision, threads=threads, batch_size=1)
        runners[name] = extractors[name]._runner
    auto = SketchExtractor.load(folder, "cpu")
    x = torch.rand(1, 3, side, side)
    image = x[0]
    runners["xdog"] = lambda _: xdog(image)
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    with torch.inference_mode():
        for fn in runners.values():
            fn(x)  # warm-up
        for _ in range(repeats):
            for name, fn in runners.items():
                c, t = time.process_time(), time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    seconds = {name: (statistics.median(v), statistics.median(cpu[name])) for name, v in times.items()}
    seconds["auto"] = f"{auto.backend} {auto.precision}"

    agreement = {name: dict(max_abs=0.0, f_score=1.0) for name in extractors}
    for photo in PHOTOS.values():
        tensor = resize_capped(read_rgb(photo.source_path()), side)
        with torch.inference_mode():
            reference = model(tensor[None])[0, 0].numpy()
        threshold = float(np.median(reference))
        lines = metrics.line_mask(reference, threshold)
        for name, extractor in extractors.items():
            got = extractor.sketch_tensors([tensor])[0]
            entry = agreement[name]
            entry["max_abs"] = max(entry["max_abs"], float(np.abs(got - reference).max()))
            entry["f_score"] = min(entry["f_score"], metrics.f_score(lines, metrics.line_mask(got, threshold), 1.0))
    return seconds, agreement


def pipeline_time(model_id: str, resolution: int, steps: int, timesteps: int) -> float:
    model = load_model(ModelConfig(id=model_id))
    indices = sorted({round(i * (steps - 1) / max(timesteps - 1, 1)) for i in range(timesteps)})
    unet_specs = unet_layers(model.unet.config, resolution, model.vae_scale_factor)
    vae_specs = vae_layers(model.vae.config, resolution)
    generator = SketchGenerator(unet_specs, vae_specs, len(indices)).to(model.device).eval()
    cond = encode_prompts(model, ["a photo of a horse in mud"])

    def run():
        result = sample_conditions(model, cond, initial_noise(model, [0], resolution), steps=steps, guidance=5.0, eta=0.0, seeds=[0], capture=Capture(unet=unet_specs, vae=vae_specs, pool="full", halves="both", keep=indices, on_cpu=False))  # fmt: skip
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
    parser.add_argument("--only", choices=["student", "backends", "tiny", "sd15", "all"], default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="where the student runs (the pipeline uses model.device auto)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only in ("backends", "all"):
        seconds, agreement = backend_times(args.repeats)
        auto = seconds.pop("auto")
        base, base_cpu = seconds["eager fp32 (today)"]
        print(f"\n== extractor backends, paper-size student, 512x512, batch 1, {torch.get_num_threads()} threads "
              f"(medians of {args.repeats} interleaved rounds); auto picks: {auto}")  # fmt: skip
        print("CPU-s: the process's CPU time per image (all threads), which other users of a shared machine do not inflate")
        print("| backend | wall s / image | images / s | vs today (wall) | CPU-s / image | vs today (CPU) | >= 4 images/s | "
              "max abs diff vs fp32 | line F-score vs fp32 |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for name, (t, c) in seconds.items():
            a = agreement.get(name)
            check = f"{a['max_abs']:.2e} | {a['f_score']:.4f}" if a else "- | -"
            print(f"| {name} | {t:.3f} | {1 / t:.2f} | {base / t:.2f}x | {c:.3f} | {base_cpu / c:.2f}x | {'yes' if 1 / t >= 4 else 'no'} | {check} |")
        if args.only == "backends":
            return
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
