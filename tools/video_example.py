"""Make the example video of docs/video.md: a pan over a photo, sketched per frame and in the temporal mode.

    python tools/video_example.py            # writes docs/assets/video/, prints the figures for the page

Steps, all on the CPU in a few minutes, offline:

1. A small student (width 16, 2 downsamplings, 2 blocks) fitted to the example pair alone
   (``data/example/cat.png`` -> ``cat_sketch.png``: random 128 px crops and flips, L1, Adam,
   ``--iterations``), seeded. It stands in for a distilled style: it draws the example's lines,
   but is no substitute for ``dvc repro``'s student.
2. The clip: a 240x180 window on the photo ``--photo`` (diffsketch.evaluation.data): one second
   still, two seconds panning across, one second still, at 12 frames per second, with fresh
   sensor noise (``--noise``) on every frame, encoded with H.264 (``pan.mp4``).
3. ``diffsketch extract``'s video path (``extract_videos``) on it in both modes, and one clip of
   the three side by side (the clip in grey, per-frame, temporal: ``pan_compare.mp4``, and its
   mid-pan frame as ``pan_compare.png``), with each mode's flicker and lag printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from diffsketch.core import read_rgb
from diffsketch.evaluation.data import PHOTOS
from diffsketch.extractor import SketchExtractor, extract_videos
from diffsketch.student.network import Student, StudentConfig, save_student

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "assets" / "video"
WIDTH, HEIGHT, RATE = 240, 180, 12


def fit_student(iterations: int, folder: Path) -> Path:
    """A small student fitted to the example pair's crops."""
    torch.manual_seed(0)
    photo = read_rgb(REPO / "data" / "example" / "cat.png")
    with Image.open(REPO / "data" / "example" / "cat_sketch.png") as im:
        sketch = torch.from_numpy(np.asarray(im.convert("L"), dtype=np.float32) / 255)[None]
    model = Student(StudentConfig(16, 2, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    crop, batch = 128, 8
    _, height, width = photo.shape
    for step in range(iterations):
        tops = torch.randint(0, height - crop + 1, (batch,))
        lefts = torch.randint(0, width - crop + 1, (batch,))
        x = torch.stack([photo[:, t : t + crop, l : l + crop] for t, l in zip(tops, lefts)])
        y = torch.stack([sketch[:, t : t + crop, l : l + crop] for t, l in zip(tops, lefts)])
        flip = torch.rand(batch) < 0.5
        x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
        loss = (model(x) - y).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == iterations - 1:
            print(f"fit step {step}: L1 {loss.item():.4f}")
    return save_student(model.eval(), folder / "student.safetensors")


def pan_frames(photo_name: str, noise: float) -> list[np.ndarray]:
    """Still, pan, still: a WIDTH x HEIGHT window on the photo (scaled to HEIGHT * 1.25 px high), noisy frames."""
    with Image.open(PHOTOS[photo_name].source_path()) as im:
        im = im.convert("RGB")
        scale = HEIGHT * 1.25 / im.height
        image = (
            np.asarray(im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)).astype(np.float32)
            / 255
        )
    top = (image.shape[0] - HEIGHT) // 2
    travel = image.shape[1] - WIDTH
    lefts = (
        [0] * RATE
        + [round(travel * (1 - np.cos(np.pi * i / (2 * RATE - 1))) / 2) for i in range(2 * RATE)]
        + [travel] * RATE
    )
    rng = np.random.default_rng(0)
    frames = []
    for left in lefts:
        view = image[top : top + HEIGHT, left : left + WIDTH] + rng.normal(0, noise, (HEIGHT, WIDTH, 3))
        frames.append((np.clip(view, 0, 1) * 255).round().astype(np.uint8))
    return frames


def write_mp4(path: Path, frames: list[np.ndarray]) -> Path:
    """(H, W, 3) uint8 frames as H.264 at RATE frames per second."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE, options={"crf": "20"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def decode_grey(path: Path) -> list[np.ndarray]:
    """Every frame of a clip as (H, W) uint8 grey."""
    with av.open(str(path)) as clip:
        return [frame.to_ndarray(format="gray") for frame in clip.decode(video=0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="coffee", choices=sorted(PHOTOS))
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--iterations", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        extractor = SketchExtractor.load(fit_student(args.iterations, folder), "cpu", "torch", precision="fp32")
        clip = write_mp4(OUT / "pan.mp4", pan_frames(args.photo, args.noise))
        figures = {}
        for mode in ("per-frame", "temporal"):
            run = extract_videos(
                extractor, [clip], folder / mode, temporal=mode == "temporal", overwrite=True, progress=False
            )
            assert not run.failed, run.failed
            figures[mode] = json.loads(run.summary.read_text())
        panels = [
            decode_grey(clip),
            decode_grey(folder / "per-frame" / clip.name),
            decode_grey(folder / "temporal" / clip.name),
        ]
        gap = np.full((HEIGHT, 4), 255, np.uint8)
        frames = [np.hstack([panels[0][i], gap, panels[1][i], gap, panels[2][i]]) for i in range(len(panels[0]))]
        write_mp4(OUT / "pan_compare.mp4", [np.repeat(f[..., None], 3, axis=2) for f in frames])
        Image.fromarray(frames[2 * RATE]).save(OUT / "pan_compare.png", optimize=True)  # mid-pan
    for mode, summary in figures.items():
        print(
            f"{mode}: flicker {summary['flicker']:.4f}, lag {summary['lag']:.4f} (per-frame flicker {summary['per_frame_flicker']:.4f})"
        )
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
