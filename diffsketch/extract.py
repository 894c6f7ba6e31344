"""Batch sketch extraction with the distilled student: image files in, PNG sketches out.

:func:`run_extract` turns a list of inputs (files, folders, glob patterns) into one sketch per
image, written as ``<out>/<stem>.png``; files found under a folder keep their sub-path below it, so
``photos/a/x.jpg`` from the input ``photos`` becomes ``<out>/a/x.png``. Sketches have the size of
the (EXIF-rotated) input, optionally capped on the long side.

Per-image problems (an unreadable or non-image file, a missing path, two inputs that would write
the same output, an image too small for the network) are collected in the :class:`ExtractReport`
and the run goes on; existing outputs are skipped unless ``overwrite``. Problems with the run
itself (a missing or corrupt model, an unavailable device, a bad option) raise before any image is
read: :class:`~diffsketch.student.StudentLoadError` or :class:`ExtractError`.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffsketch.student import Student, StudentConfig, load_student
from diffsketch.styles import StyleError, read_rgb

DEFAULT_MODEL = Path("models/student.safetensors")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEVICES = ("auto", "cpu", "cuda")
_GLOB_CHARS = set("*?[")


class ExtractError(ValueError):
    """An extract option cannot be used (device, size, batch size, threshold); the message says why."""


@dataclass(frozen=True)
class Failure:
    """One input that produced no sketch: ``source`` as given or found, and a message naming it."""

    source: str
    message: str


@dataclass
class ExtractReport:
    """What a run did: outputs written, outputs skipped because they existed, inputs that failed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (skipped outputs are not failures)."""
        return not self.failed

    def summary(self) -> str:
        """One line, e.g. ``12 written, 1 skipped (exists), 2 failed``."""
        return f"{len(self.written)} written, {len(self.skipped)} skipped (exists), {len(self.failed)} failed"


@dataclass(frozen=True)
class Job:
    """One image to sketch: the input file and the PNG to write."""

    source: Path
    target: Path


# --------------------------------------------------------------------------------------------
# Inputs -> jobs
# --------------------------------------------------------------------------------------------


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(relative: Path) -> bool:
    """True if a file or any folder on its path below the input folder starts with a dot."""
    return any(part.startswith(".") for part in relative.parts)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _scan_folder(folder: Path, base: Path, out: Path, recursive: bool) -> list[Job]:
    """Image files in ``folder`` (and below it when ``recursive``), targets relative to ``base``.

    Hidden files and folders (names starting with a dot) and anything inside the output folder
    are left out, so a second run does not sketch the sketches of the first.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    out_resolved = out.resolve()
    jobs = []
    for path in sorted(found):
        if not path.is_file() or not _is_image_name(path) or _is_hidden(path.relative_to(folder)):
            continue
        if _inside(path, out_resolved):
            continue
        jobs.append(Job(path, out / path.relative_to(base).with_suffix(".png")))
    return jobs


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard: ``photos/**/*.jpg`` -> ``photos``."""
    parts = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _expand(arg: str, out: Path, recursive: bool) -> tuple[list[Job], list[Failure]]:
    """The jobs one command-line input gives, or the failure saying why it gives none."""
    if _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        base = _glob_base(arg)
        jobs: list[Job] = []
        for match in map(Path, matches):
            if match.is_dir():
                jobs += _scan_folder(match, base, out, recursive)
            elif match.is_file() and _is_image_name(match) and not _inside(match, out.resolve()):
                jobs.append(Job(match, out / match.relative_to(base).with_suffix(".png")))
        if not jobs:
            what = "no file matches this pattern" if not matches else "no image file matches this pattern"
            return [], [Failure(arg, f"{arg}: {what}")]
        return jobs, []
    path = Path(arg)
    if path.is_dir():
        jobs = _scan_folder(path, path, out, recursive)
        if not jobs:
            hint = "" if recursive else " (use --recursive to look in its subfolders)"
            kinds = " ".join(IMAGE_EXTENSIONS)
            return [], [Failure(arg, f"{arg}: folder holds no image files ({kinds}){hint}")]
        return jobs, []
    if path.is_file():
        return [Job(path, out / f"{path.stem}.png")], []  # a named file is always attempted
    if path.exists():
        return [], [Failure(arg, f"{arg} is not a file or folder")]
    return [], [Failure(arg, f"{arg} does not exist")]


def collect_jobs(inputs: list[str], out: str | Path, recursive: bool = False) -> tuple[list[Job], list[Failure]]:
    """Expand files, folders and glob patterns into jobs, in the order given.

    Args:
        inputs: image files (always attempted, whatever their extension), folders (their image
            files, by extension; the top level only unless ``recursive``) and glob patterns
            (expanded with ``**`` support; matching folders are scanned like folder inputs).
        out: the output folder.
        recursive: descend into the subfolders of folder inputs.

    Returns:
        The jobs, and failures for inputs that give no image (a missing path, a pattern that
        matches nothing, an empty folder) or whose output another input already claims. The same
        file reached twice (e.g. by a folder and a pattern) is done once.
    """
    out = Path(out)
    jobs: list[Job] = []
    failures: list[Failure] = []
    claimed: dict[Path, Path] = {}  # target -> source
    for arg in inputs:
        found, failed = _expand(str(arg), out, recursive)
        failures += failed
        for job in found:
            key = Path(os.path.normcase(os.path.abspath(job.target)))
            other = claimed.get(key)
            if other is None:
                claimed[key] = job.source
                jobs.append(job)
            elif os.path.normcase(os.path.abspath(other)) != os.path.normcase(os.path.abspath(job.source)):
                failures.append(Failure(
                    str(job.source),
                    f"{job.source}: not sketched, its output {job.target} would overwrite the sketch of {other}; "
                    "rename one of them or extract them into different --out folders",
                ))  # fmt: skip
    return jobs, failures


# --------------------------------------------------------------------------------------------
# Images in, sketches out
# --------------------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an :class:`ExtractError`."""
    if device not in DEVICES:
        raise ExtractError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExtractError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def smallest_side(config: StudentConfig) -> int:
    """The smallest height and width (pixels) the student runs on, for any ``config``.

    A side must exceed ``2 ** downsamples``, so that the residual blocks' reflection padding finds
    2 pixels at the lowest resolution (and instance norm more than one value), and be at least 4,
    for the 7x7 stem's reflection padding of 3.
    """
    return max(config.multiple + 1, 4)


def cap_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(height, width) scaled so the long side is at most ``size``, keeping the aspect ratio (rounded)."""
    long_side = max(height, width)
    if size is None or long_side <= size:
        return height, width
    scale = size / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def prepare_image(source: Path, size: int | None, min_side: int, size_param: str = "--size") -> torch.Tensor:
    """Read ``source`` as (3, H, W) RGB, downscaled (antialiased) when its long side exceeds ``size``.

    Raises:
        StyleError: the file cannot be read as an image, or the image is smaller than ``min_side``
            (the message names ``size_param`` when the downscaling made it so).
    """
    image = read_rgb(source)
    height, width = image.shape[-2:]
    new_h, new_w = cap_size(height, width, size)
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
        image = image.clamp(0, 1)
    if min(new_h, new_w) < min_side:
        raise StyleError(
            f"{source} is {new_w}x{new_h} px; at least {min_side} px are needed on each side"
            + (f" (raise {size_param})" if (new_h, new_w) != (height, width) else "")
        )
    return image


def sketch_to_png(sketch: np.ndarray, transparent: bool = False, threshold: float | None = None) -> Image.Image:
    """A (H, W) sketch in [0, 1] (1 = paper) as a PIL image ready to save as PNG.

    Args:
        sketch: the network's output for one image.
        transparent: RGBA with black ink and alpha = 1 - sketch (paper transparent) instead of grey.
        threshold: binarise first: values below it become ink (0), the others paper (1).

    Returns:
        Mode ``L`` (dark lines on white) or ``RGBA``; alpha is exactly 255 minus the grey value.
    """
    values = np.clip(np.nan_to_num(sketch.astype(np.float32), nan=1.0), 0.0, 1.0)
    if threshold is not None:
        values = np.where(values < threshold, 0.0, 1.0)
    grey = np.rint(values * 255.0).astype(np.uint8)
    if not transparent:
        return Image.fromarray(grey)  # uint8 (H, W) -> mode L
    rgba = np.zeros((*grey.shape, 4), dtype=np.uint8)
    rgba[..., 3] = 255 - grey
    return Image.fromarray(rgba)  # uint8 (H, W, 4) -> mode RGBA


def write_png_atomic(image: Image.Image, target: Path) -> None:
    """Save ``image`` as PNG to a temporary file beside ``target``, then rename it into place.

    A crash or a full disk leaves either the old file or none, never half a PNG.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _Runner:
    """Groups consecutive same-size images into batches, runs the student, writes the sketches."""

    def __init__(self, model: Student, device: torch.device, batch_size: int, report: ExtractReport, bar, png_options: dict):
        self.model, self.device, self.batch_size = model, device, batch_size
        self.report, self.bar, self.png_options = report, bar, png_options
        self.pending: list[tuple[Job, torch.Tensor]] = []

    def add(self, job: Job, image: torch.Tensor) -> None:
        if self.pending and self.pending[0][1].shape != image.shape:
            self.flush()
        self.pending.append((job, image))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        images = torch.stack([image for _, image in batch]).to(self.device)
        with torch.inference_mode():
            sketches = self.model(images)[:, 0].float().cpu().numpy()
        for (job, _), sketch in zip(batch, sketches):
            try:
                write_png_atomic(sketch_to_png(sketch, **self.png_options), job.target)
            except OSError as err:
                self.report.failed.append(Failure(str(job.source), f"{job.source}: could not write {job.target} ({err})"))
            else:
                self.report.written.append(job.target)
        self.bar.update(len(batch))


def run_extract(
    inputs: list[str | Path],
    out: str | Path,
    model_path: str | Path = DEFAULT_MODEL,
    *,
    size: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    transparent: bool = False,
    threshold: float | None = None,
    overwrite: bool = False,
    recursive: bool = False,
    progress: bool = True,
) -> ExtractReport:
    """Sketch every image in ``inputs`` with the student at ``model_path``, writing PNGs under ``out``.

    Args:
        inputs: files, folders and glob patterns (see :func:`collect_jobs`).
        out: output folder; ``<stem>.png`` per image, sub-paths below folder inputs kept.
        model_path: the student's safetensors file (its ``.json`` config beside it).
        size: cap on the long side: a larger image is downscaled (antialiased) before the network
            and its sketch is written at that reduced size. None: the input's own size.
        batch_size: at most this many consecutive images of the same size go through one forward pass.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        transparent: write RGBA (black ink, alpha = 1 - sketch) instead of grey.
        threshold: binarise the sketch at this value in [0, 1] (below = ink).
        overwrite: replace existing outputs instead of skipping them.
        recursive: descend into the subfolders of folder inputs.
        progress: show a progress bar over the images.

    Returns:
        The :class:`ExtractReport`.

    Raises:
        ExtractError: a bad option or an unavailable device.
        StudentLoadError: the model is missing or unreadable (raised before any image is read).
    """
    from tqdm.auto import tqdm

    if size is not None and size < 1:
        raise ExtractError(f"--size {size} must be a positive number of pixels")
    if batch_size < 1:
        raise ExtractError(f"--batch-size {batch_size} must be at least 1")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ExtractError(f"--threshold {threshold} must be between 0 and 1")
    torch_device = resolve_device(device)
    model, _ = load_student(model_path, torch_device)
    min_side = smallest_side(model.config)

    report = ExtractReport()
    jobs, report.failed = collect_jobs([str(i) for i in inputs], out, recursive)
    png_options = dict(transparent=transparent, threshold=threshold)
    with tqdm(total=len(jobs), disable=not progress, unit="image", desc="extract") as bar:
        runner = _Runner(model, torch_device, batch_size, report, bar, png_options)
        for job in jobs:
            if job.target.exists() and not overwrite:
                report.skipped.append(job.target)
                bar.update(1)
                continue
            try:
                image = prepare_image(job.source, size, min_side)
            except StyleError as err:
                report.failed.append(Failure(str(job.source), str(err)))
                bar.update(1)
                continue
            runner.add(job, image)
        runner.flush()
    return report
