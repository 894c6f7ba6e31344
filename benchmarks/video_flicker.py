"""Flicker and lag of video sketches: the temporal mode against per-frame processing, side by side.

The clip (unless ``--clip`` gives one): a packaged photo (diffsketch.evaluation.data, ``chelsea``)
as a static camera's view, a red square crossing it, and Gaussian sensor noise (``--noise``, in
[0, 1] units) drawn afresh on every frame, encoded with H.264 (CRF 12) so compression adds its own
noise. Both modes sketch the same clip with the same student through
``SketchExtractor.sketch_video``; the script prints, per mode, the flicker and lag (definitions in
diffsketch.extractor.video; docs/video.md), the per-frame flicker, frames per second, and the two
targets:

    flicker(temporal) / flicker(per-frame)  <= 0.5
    lag(temporal)     / flicker(per-frame)  <= 1.2

The student: ``--model`` (a style folder or a student .safetensors) or, by default, the paper-size
student (width 32, 3 downsamplings, 4 blocks) with random weights, seeded. A random student's lines
are not a trained one's, but it responds to the noise in the same way: pass ``--model`` to measure
yours.

Run it (offline): python benchmarks/video_flicker.py [--size 320x240] [--frames 48] [--noise 0.03] [--model M] [--clip C]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from diffsketch.evaluation.data import PHOTOS
from diffsketch.extractor import SketchExtractor
from diffsketch.student.network import Student, StudentConfig, save_student


def synthetic_clip(path: Path, width: int, height: int, frames: int, noise: float, rate: int = 25) -> Path:
    """A static photo with fresh sensor noise on each frame and a square crossing it, as H.264 (CRF 12)."""
    with Image.open(PHOTOS["chelsea"].source_path()) as im:
        background = np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR)).astype(np.float32) / 255
    rng = np.random.default_rng(0)
    side = max(4, height // 3)
    top = (height - side) // 2
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"crf": "12"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = background.copy()
            left = round(i * (width - side) / max(1, frames - 1))
            image[top : top + side, left : left + side] = [0.9, 0.2, 0.1]
            image = np.clip(image + rng.normal(0, noise, image.shape), 0, 1)
            frame = av.VideoFrame.from_ndarray((image * 255).round().astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the synthetic clip")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--noise", type=float, default=0.03, help="sensor noise's standard deviation, in [0, 1] units")
    parser.add_argument(
        "--model", type=Path, help="a style folder or student .safetensors (default: paper-size, random)"
    )
    parser.add_argument("--clip", type=Path, help="sketch this clip instead of the synthetic one")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if model is None:
            torch.manual_seed(0)
            model = save_student(Student(StudentConfig(32, 3, 4)), folder / "student.safetensors")
        clip = args.clip
        if clip is None:
            width, height = (int(v) for v in args.size.lower().split("x"))
            clip = synthetic_clip(folder / "clip.mp4", width, height, args.frames, args.noise)
        extractor = SketchExtractor.load(model, batch_size=args.batch_size)
        print(f"clip {clip.name if args.clip else f'synthetic {args.size}, {args.frames} frames, noise {args.noise}'}; "
              f"student {model if args.model else 'paper size, random weights'}; {extractor!r}")  # fmt: skip
        reports = {}
        for mode in ("per-frame", "temporal"):
            reports[mode] = extractor.sketch_video(clip, folder / f"{mode}{clip.suffix}", temporal=mode == "temporal")
        base = reports["per-frame"].flicker
        print(f"{'mode':<10} {'flicker':>9} {'lag':>9} {'flicker/pf':>11} {'lag/pf':>8} {'frames/s':>9}")
        for mode, report in reports.items():
            ratio = report.flicker / base if base else float("nan")
            lag_ratio = report.lag / base if base else float("nan")
            print(
                f"{mode:<10} {report.flicker:9.5f} {report.lag:9.5f} {ratio:11.3f} {lag_ratio:8.3f} {report.frames / report.seconds:9.1f}"
            )
        temporal = reports["temporal"]
        print(f"per-frame flicker (pf) {base:.5f}; targets: flicker/pf <= 0.5 "
              f"({'met' if temporal.flicker <= 0.5 * base else 'MISSED'}), lag/pf <= 1.2 "
              f"({'met' if temporal.lag <= 1.2 * base else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()
