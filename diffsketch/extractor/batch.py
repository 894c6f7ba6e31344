"""Batch sketch extraction with the distilled student: image files in, PNG (or SVG) sketches out.

The files-and-folders layer over :class:`~diffsketch.extractor.api.SketchExtractor` (the Python API,
which owns loading, preprocessing, backends and output conversion). :func:`run_extract` turns a list of inputs (files, folders, glob patterns) into one sketch per
image, written as ``<out>/<stem>.png`` (``.svg`` with ``format="svg"``); files found under a folder keep their sub-path below it, so
``photos/a/x.jpg`` from the input ``photos`` becomes ``<out>/a/x.png``. Sketches have the size of
the (EXIF-rotated) input, optionally capped on the long side.

Per-image problems (an unreadable or non-image file, a missing path, two inputs that would write
the same output, an image too small for the network) are collected in the :class:`ExtractReport`
and the run goes on; existing outputs are skipped unless ``overwrite``. An SVG with no path (a
sketch with no ink below the threshold, e.g. an all-white one) is still written, and counted in the
report's summary and named in a logged warning. Problems with the run
itself (a missing or corrupt model, an unavailable device, a bad option) raise before any image is
read: :class:`~diffsketch.student.network.StudentLoadError` or :class:`ExtractError`.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from diffsketch.core import ImageError, read_rgb
from diffsketch.core import images as core_images
from diffsketch.extractor.api import (  # noqa: F401 - re-exported: extract's public names before the API existed
    DEVICES,
    MAX_MEGAPIXELS,
    SVG_THRESHOLD,
    ExtractError,
    SketchExtractor,
    cap_size,
    check_megapixels,
    extractor_device,
    line_style,
    resize_capped,
    resize_to,
    sketch_to_png,
    sketch_to_svg,
    smallest_side,
)
from diffsketch.extractor.tiles import DEFAULT_TILE

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path("models/student.safetensors")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
FORMATS = ("png", "svg")
EMPTY_SHOWN = 10  # empty SVGs named in the warning; the rest are counted
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Failure:
    """One input that produced no sketch: ``source`` as given or found, and a message naming it."""

    source: str
    message: str


@dataclass
class ExtractReport:
    """What a run did: outputs written, outputs skipped because they existed, inputs that failed,
    and the written SVGs that hold no path (``empty``, also in ``written``)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (skipped outputs are not failures)."""
        return not self.failed

    def summary(self) -> str:
        """One line, e.g. ``12 written, 1 skipped (exists), 2 failed``; empty SVGs are counted after it:
        ``12 written, 0 skipped (exists), 0 failed; 2 SVGs have no lines (...)``."""
        text = f"{len(self.written)} written, {len(self.skipped)} skipped (exists), {len(self.failed)} failed"
        if self.empty:
            count = "1 SVG has" if len(self.empty) == 1 else f"{len(self.empty)} SVGs have"
            text += f"; {count} no lines (nothing darker than the threshold: a blank sketch, or raise --threshold)"
        return text


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


def _scan_folder(folder: Path, base: Path, out: Path, recursive: bool, suffix: str = ".png") -> list[Job]:
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
        jobs.append(Job(path, out / path.relative_to(base).with_suffix(suffix)))
    return jobs


def _glob_base(pattern: str) -> Path:
    """The leading folders of a glob pattern that hold no wildcard: ``photos/**/*.jpg`` -> ``photos``."""
    parts = []
    for part in Path(pattern).parts:
        if _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _expand(arg: str, out: Path, recursive: bool, suffix: str = ".png") -> tuple[list[Job], list[Failure]]:
    """The jobs one command-line input gives, or the failure saying why it gives none."""
    if _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        base = _glob_base(arg)
        jobs: list[Job] = []
        for match in map(Path, matches):
            if match.is_dir():
                jobs += _scan_folder(match, base, out, recursive, suffix)
            elif match.is_file() and _is_image_name(match) and not _inside(match, out.resolve()):
                jobs.append(Job(match, out / match.relative_to(base).with_suffix(suffix)))
        if not jobs:
            what = "no file matches this pattern" if not matches else "no image file matches this pattern"
            return [], [Failure(arg, f"{arg}: {what}")]
        return jobs, []
    path = Path(arg)
    if path.is_dir():
        jobs = _scan_folder(path, path, out, recursive, suffix)
        if not jobs:
            hint = "" if recursive else " (use --recursive to look in its subfolders)"
            kinds = " ".join(IMAGE_EXTENSIONS)
            return [], [Failure(arg, f"{arg}: folder holds no image files ({kinds}){hint}")]
        return jobs, []
    if path.is_file():
        return [Job(path, out / f"{path.stem}{suffix}")], []  # a named file is always attempted
    if path.exists():
        return [], [Failure(arg, f"{arg} is not a file or folder")]
    return [], [Failure(arg, f"{arg} does not exist")]


def collect_jobs(
    inputs: list[str], out: str | Path, recursive: bool = False, suffix: str = ".png"
) -> tuple[list[Job], list[Failure]]:
    """Expand files, folders and glob patterns into jobs, in the order given.

    Args:
        inputs: image files (always attempted, whatever their extension), folders (their image
            files, by extension; the top level only unless ``recursive``) and glob patterns
            (expanded with ``**`` support; matching folders are scanned like folder inputs).
        out: the output folder.
        recursive: descend into the subfolders of folder inputs.
        suffix: the outputs' file extension (``.png`` or ``.svg``).

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
        found, failed = _expand(str(arg), out, recursive, suffix)
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


def prepare_image(
    source: Path, size: int | None, min_side: int, size_param: str = "--size", *, bounded: bool = False,
    max_megapixels: float | None = None,
) -> torch.Tensor:
    """Read ``source`` as (3, H, W) RGB, downscaled (antialiased) when its long side exceeds ``size``.

    Args:
        source: the image file.
        size: cap on the long side (None: the file's own size).
        min_side: the smallest side the network takes.
        size_param: the option that set ``size``, for the message.
        bounded: read as the extractor does, with bounded memory: refused over ``max_megapixels``
            from the header, decoded at a reduced size when ``size`` is at most half the long side,
            and an 8-bit photo that needs no resizing kept ``uint8``
            (:func:`~diffsketch.core.images.read_rgb_bounded`). Else float32 in [0, 1] from the full decode.
        max_megapixels: the cap for ``bounded`` (None: none).

    Raises:
        ImageError: the file cannot be read as an image, is over the megapixel cap (:class:`TooLargeError`),
            or the image is smaller than ``min_side`` (the message names ``size_param`` when the downscaling made it so).
    """
    if bounded:
        height, width = core_images.image_size(source)
        check_megapixels(height, width, max_megapixels, str(source))
        image = resize_to(core_images.read_rgb_bounded(source, max_side=size), cap_size(height, width, size))
    else:
        image = read_rgb(source)
        height, width = image.shape[-2:]
        image = resize_capped(image, size)
    new_h, new_w = image.shape[-2:]
    if min(new_h, new_w) < min_side:
        raise ImageError(
            f"{source} is {new_w}x{new_h} px; at least {min_side} px are needed on each side"
            + (f" (raise {size_param})" if (new_h, new_w) != (height, width) else "")
        )
    return image


def write_png_atomic(image: Image.Image | str, target: Path) -> None:
    """Save ``image`` (a PIL image as PNG, or an SVG document) to a temporary file beside ``target``, then rename it.

    A crash or a full disk leaves either the old file or none, never half a file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if isinstance(image, str):
            tmp.write_text(image, encoding="utf-8")
        else:
            image.save(tmp, format="PNG")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _Runner:
    """Groups consecutive same-size images into batches, runs the extractor, writes the sketches."""

    def __init__(self, extractor: SketchExtractor, report: ExtractReport, bar, convert):
        self.extractor, self.report, self.bar, self.convert = extractor, report, bar, convert
        self.pending: list[tuple[Job, torch.Tensor]] = []

    def add(self, job: Job, image: torch.Tensor) -> None:
        if self.pending and (self.pending[0][1].shape, self.pending[0][1].dtype) != (image.shape, image.dtype):
            self.flush()
        self.pending.append((job, image))
        if len(self.pending) >= self.extractor.batch_size or self.extractor.needs_tiles(image):
            self.flush()  # a tiled photo goes alone: one large photo in memory at a time

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        sketches = self.extractor.sketch_tensors([image for _, image in batch])
        for (job, _), sketch in zip(batch, sketches):
            output = self.convert(sketch)
            try:
                write_png_atomic(output, job.target)
            except OSError as err:
                self.report.failed.append(Failure(str(job.source), f"{job.source}: could not write {job.target} ({err})"))
            else:
                self.report.written.append(job.target)
                if isinstance(output, str) and "<path" not in output:
                    self.report.empty.append(job.target)
        self.bar.update(len(batch))


def run_extract(
    inputs: list[str | Path],
    out: str | Path,
    model_path: str | Path = DEFAULT_MODEL,
    *,
    size: int | str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    backend: str = "auto",
    precision: str = "auto",
    transparent: bool = False,
    threshold: float | None = None,
    format: str = "png",
    overwrite: bool = False,
    recursive: bool = False,
    progress: bool = True,
    tile: int = DEFAULT_TILE,
    max_megapixels: float | None = MAX_MEGAPIXELS,
    line_width: float = 1.0,
    binarize: tuple[float, float] | str | None = None,
    min_speck: int = 0,
    line_color: str = "black",
    background: str | None = None,
) -> ExtractReport:
    """Sketch every image in ``inputs`` with the student at ``model_path``, writing PNGs (or SVGs) under ``out``.

    The images go through :class:`~diffsketch.extractor.api.SketchExtractor`, the same path as the Python API.

    Args:
        inputs: files, folders and glob patterns (see :func:`collect_jobs`).
        out: output folder; ``<stem>.png`` (``.svg``) per image, sub-paths below folder inputs kept.
        model_path: a style folder, the student's safetensors file (its ``.json`` config beside it) or an ONNX graph.
        size: cap on the long side: a larger image is downscaled (antialiased) before the network
            and its sketch is written at that reduced size. None or ``"native"``: the input's own
            size (by tiles when a side is over ``tile``).
        batch_size: at most this many consecutive images of the same size go through one forward pass.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        backend: ``auto``, ``torch`` or ``onnx``; precision: ``auto``, ``fp32`` or ``bf16``
            (see :mod:`diffsketch.extractor.api`).
        transparent: write RGBA (black ink, alpha = 1 - sketch) instead of grey (PNG only).
        threshold: binarise the sketch at this value in [0, 1] (below = ink); for SVG, the
            tracing threshold (default 0.5).
        format: ``png`` or ``svg`` (the lines traced into paths with vtracer).
        overwrite: replace existing outputs instead of skipping them.
        recursive: descend into the subfolders of folder inputs.
        progress: show a progress bar over the images.
        tile: the tile side in pixels for photos sketched at a larger size (0: always whole).
        max_megapixels: photos with more pixels are reported as failed without being decoded (None: no cap).
        line_width: stroke width factor (:mod:`diffsketch.extractor.lines`, as for the rest of the line controls).
        binarize: hysteresis thresholds ``(low, high)``, or a named mode.
        min_speck: connected ink areas smaller than this many pixels are removed.
        line_color: the ink colour.
        background: the paper colour, or ``transparent`` (the same as ``transparent``).

    Returns:
        The :class:`ExtractReport`.

    Raises:
        ExtractError: a bad option or an unavailable device.
        StudentLoadError: the model is missing or unreadable (raised before any image is read).
    """
    from tqdm.auto import tqdm

    if size == "native":
        size = None
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ExtractError(f"--size {size} must be a positive number of pixels, or native")
    if batch_size < 1:
        raise ExtractError(f"--batch-size {batch_size} must be at least 1")
    style = line_style(threshold, transparent, line_width, binarize, min_speck, line_color, background)
    if format not in FORMATS:
        raise ExtractError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "svg" and transparent:
        raise ExtractError("--transparent applies to PNG output; an SVG's paper is always transparent")
    plain = style == line_style(threshold, transparent)  # no line control: the SVG traced as before
    if format == "svg":
        import importlib.util

        if importlib.util.find_spec("vtracer") is None:
            raise ExtractError("--format svg needs vtracer: pip install vtracer")
        convert = lambda sketch: sketch_to_svg(sketch, threshold) if plain else sketch_to_svg(sketch, style=style)
    else:
        convert = lambda sketch: sketch_to_png(sketch, style=style)
    extractor = SketchExtractor.load(model_path, device, backend, precision=precision, batch_size=batch_size, tile=tile,
                                     max_megapixels=max_megapixels)  # fmt: skip

    report = ExtractReport()
    jobs, report.failed = collect_jobs([str(i) for i in inputs], out, recursive, suffix=f".{format}")
    with tqdm(total=len(jobs), disable=not progress, unit="image", desc="extract") as bar:
        runner = _Runner(extractor, report, bar, convert)
        for job in jobs:
            if job.target.exists() and not overwrite:
                report.skipped.append(job.target)
                bar.update(1)
                continue
            try:
                image = prepare_image(job.source, size, extractor.min_side, bounded=True, max_megapixels=max_megapixels)
            except ImageError as err:
                report.failed.append(Failure(str(job.source), str(err)))
                bar.update(1)
                continue
            runner.add(job, image)
        runner.flush()
    if report.empty:
        shown = ", ".join(str(p) for p in report.empty[:EMPTY_SHOWN])
        more = f" and {len(report.empty) - EMPTY_SHOWN} more" if len(report.empty) > EMPTY_SHOWN else ""
        log.warning(
            "%d of %d SVGs have no lines (nothing in the sketch is darker than the threshold %s): %s%s. "
            "An all-white sketch traces to an empty SVG; a higher --threshold keeps lighter lines",
            len(report.empty), len(report.written), SVG_THRESHOLD if threshold is None else threshold, shown, more,
        )  # fmt: skip
    return report
