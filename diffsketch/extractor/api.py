"""The sketch extractor API: a distilled student (or a style folder) applied to images in memory.

    from diffsketch import SketchExtractor

    extractor = SketchExtractor.load("styles/cat")      # a style folder, or models/student.safetensors
    sketch = extractor("photo.jpg")                      # a path, bytes, a PIL image, a numpy array, or a list
    sketch.save("photo_sketch.png")                      # a PIL image at the photo's size
    svg = extractor.svg("photo.jpg", threshold=0.5)      # the lines traced into SVG paths (vtracer)

This module owns everything between "a model on disk" and "a sketch in memory": finding and loading
the model (safetensors or ONNX only, never a pickle), the image loader (the one of
:mod:`diffsketch.core.images`: EXIF rotation for paths and bytes, any PIL mode, transparency over white), the optional cap on
the long side, the backends, and the conversion of the network's output to PNG-ready images and
SVG. ``diffsketch extract`` (files and folders), the ``evaluate`` stage and the web page
(:mod:`diffsketch.extractor.web`) all go through it.

Backends (``backend``, ``precision``):

- ``torch`` / ``fp32``: PyTorch, ``torch.inference_mode``. The student's instance norms run as the
  equivalent group norm (one group per channel, the same weights): PyTorch's CPU instance norm
  copies its input into a batch-norm layout, and took about 60 % of a 512² forward pass; the
  group-norm kernel computes the same values (within 1e-6) 3-6 times faster.
- ``torch`` / ``bf16``: the same with weights and activations in bfloat16, channels-last memory
  layout (oneDNN's AMX / AVX-512 BF16 convolutions), except for the stem (the 7x7 convolution
  that sees the photo), which stays in fp32 with the input scaling, padding and final sigmoid:
  rounding the photo itself to bf16 was the largest single error (max abs 0.023 -> 0.0197 on
  random paper-size weights over the packaged photos at 512 px), for 0.14 CPU-s per image; also
  keeping the head in fp32 cost another 0.1 CPU-s for no gain. Line-pixel F-score above 0.99.
- ``onnx`` / ``fp32``: ONNX Runtime (CPU, or CUDA when its provider is installed) on the style
  folder's ``student.onnx`` (exported on the fly for a bare safetensors file).

``auto`` (the default) picks, on a GPU, PyTorch fp32; on a CPU, PyTorch bf16 when the CPU has AMX
or AVX-512 BF16 (read from ``/proc/cpuinfo``) and oneDNN supports bf16 there; else (fp32 on a CPU)
ONNX Runtime when the files include an ONNX graph (a style folder) and ONNX Runtime is installed,
else PyTorch fp32. That choice is by capability, not measured at load time;
``benchmarks/extract_speed.py`` measures every backend and precision side by side (docs/performance.md,
"Performance": on the 2-core machine, quiet, bf16 7.9 images/s, ONNX Runtime fp32 2.9, PyTorch fp32 2.4).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from diffsketch.core import DiffsketchError, ImageError, apply_threads, devices, pil_to_tensor
from diffsketch.core import images as core_images
from diffsketch.extractor.lines import LineStyle, LineStyleError, apply_lines, hex_colour, render
from diffsketch.extractor.tiles import DEFAULT_TILE, TiledStudent, unit_float
from diffsketch.student import Student, StudentConfig, StudentLoadError, load_student, smallest_side

WEIGHTS_FILE = "student.safetensors"
CONFIG_FILE = "student.json"
ONNX_FILE = "student.onnx"
CARD_FILE = "README.md"
BACKENDS = ("auto", "torch", "onnx")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")
MAX_MEGAPIXELS = 40.0  # the default cap on a photo's pixels, for the API, `extract` and the web page


class TooLargeError(ImageError):
    """A photo has more pixels than the megapixel cap; the message names the cap and how to raise it."""


def check_megapixels(height: int, width: int, cap: float | None, name: str = "the image") -> None:
    """Refuse a ``width`` x ``height`` picture over ``cap`` megapixels (None: no cap), before decoding it.

    >>> check_megapixels(6000, 8000, 50.0)
    >>> check_megapixels(6000, 8000, 40.0, "big.jpg")
    Traceback (most recent call last):
    ...
    diffsketch.extractor.api.TooLargeError: big.jpg is 8000x6000 px (48.0 megapixels), over the cap of 40 megapixels; raise the cap with --max-megapixels (max_megapixels= in SketchExtractor.load), or downscale the photo
    """
    if cap is not None and height * width > cap * 1e6:
        raise TooLargeError(
            f"{name} is {width}x{height} px ({height * width / 1e6:.1f} megapixels), over the cap of {cap:g} megapixels; "
            "raise the cap with --max-megapixels (max_megapixels= in SketchExtractor.load), or downscale the photo"
        )


class ExtractError(DiffsketchError, ValueError):
    """An extract option cannot be used (device, backend, size, batch size, threshold); the message says why."""


# --------------------------------------------------------------------------------------------
# Finding the model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    """Where a student's files are: its safetensors weights and/or its ONNX graph, and the style folder."""

    weights: Path | None
    onnx: Path | None
    folder: Path | None

    @property
    def name(self) -> str:
        return self.folder.name if self.folder is not None else (self.weights or self.onnx).stem


def _refuse_pickle(path: Path) -> StudentLoadError:
    return StudentLoadError(
        f"{path} is a pickle checkpoint ({path.suffix}); diffsketch loads only safetensors and ONNX files, because "
        "unpickling can run arbitrary code. Convert it with safetensors.torch.save_file on a machine you trust, "
        "or use the student.safetensors the distill stage writes"
    )


def locate(path: str | Path) -> ModelFiles:
    """The model files at ``path``: a style folder, a ``.safetensors`` student or a ``.onnx`` graph.

    Raises:
        StudentLoadError: nothing loadable there, or a pickle checkpoint (refused, see the message).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        weights, graph = path / WEIGHTS_FILE, path / ONNX_FILE
        if weights.is_file() or graph.is_file():
            return ModelFiles(weights if weights.is_file() else None, graph if graph.is_file() else None, path)
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _refuse_pickle(path / pickles[0])
        raise StudentLoadError(
            f"{path} is not a style folder: it has neither {WEIGHTS_FILE} nor {ONNX_FILE}; write one with "
            f"`diffsketch export --style {path}`"
        )
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _refuse_pickle(path)
    if not path.exists():
        raise StudentLoadError(
            f"student model file {path} not found; run the distill stage (`dvc repro distill`), pass --model, "
            "or give a style folder written by `diffsketch export --style`"
        )
    if suffix == ".safetensors":
        return ModelFiles(path, None, None)
    if suffix == ".onnx":
        return ModelFiles(None, path, None)
    raise StudentLoadError(f"{path}: not a model diffsketch loads; give a .safetensors student, a .onnx graph or a style folder")


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def extractor_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an :class:`ExtractError`."""
    if device not in DEVICES:
        raise ExtractError(f"--device {device!r} is not one of {', '.join(DEVICES)}")
    return devices.resolve_device(device, "--device", ExtractError, sep=" ")


@functools.cache
def cpu_bf16_capable() -> bool:
    """True when this CPU runs bf16 convolutions natively (AMX or AVX-512 BF16) and oneDNN can use them."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    try:
        supported = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        supported = False
    return native and supported


def onnxruntime_available() -> bool:
    """True when ONNX Runtime can be imported (the ``onnx`` extra: ``pip install -e ".[onnx]"``)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _auto_backend(precision: str, device: torch.device, files: ModelFiles) -> str:
    """``torch`` unless only a graph is there, or the CPU has no bf16 and a graph plus ONNX Runtime are (faster fp32)."""
    if files.weights is None:
        return "onnx"
    cpu_fp32 = device.type == "cpu" and (precision == "fp32" or (precision == "auto" and not cpu_bf16_capable()))
    return "onnx" if cpu_fp32 and files.onnx is not None and onnxruntime_available() else "torch"


def choose(backend: str, precision: str, device: torch.device, files: ModelFiles) -> tuple[str, str]:
    """The (backend, precision) that ``auto`` stands for here (see the module docstring), options checked."""
    if backend not in BACKENDS:
        raise ExtractError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ExtractError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if backend == "auto":
        backend = _auto_backend(precision, device, files)
    if backend == "torch" and files.weights is None:
        raise ExtractError(f"backend torch needs the student's safetensors weights; {files.onnx} is an ONNX graph only (use --backend onnx)")
    if backend == "onnx":
        if precision == "bf16":
            raise ExtractError("ONNX Runtime has no bf16 convolutions on the CPU; use --backend torch for bf16, or --precision fp32")
        return backend, "fp32"
    if precision == "auto":
        precision = "bf16" if device.type == "cpu" and cpu_bf16_capable() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ExtractError("--precision bf16 on the CPU needs PyTorch built with oneDNN; use --precision fp32")
    return backend, precision


class _GroupInstanceNorm(nn.Module):
    """``InstanceNorm2d(affine=True)`` computed by the group-norm kernel: one group per channel, same weights."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.groups, self.eps = norm.num_features, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class _Cast(nn.Module):
    """Casts to ``dtype`` (and to channels-last), so Student.forward's fp32 pre/post-processing stays fp32."""

    def __init__(self, dtype: torch.dtype, channels_last: bool):
        super().__init__()
        self.dtype, self.channels_last = dtype, channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _swap_norms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d) and child.affine and not child.track_running_stats:
            setattr(module, name, _GroupInstanceNorm(child))
        else:
            _swap_norms(child)


def inference_student(model: Student, precision: str = "fp32", device: torch.device | str = "cpu") -> Student:
    """A copy of ``model`` prepared for fast inference (see the module docstring); ``model`` is untouched."""
    fast = copy.deepcopy(model).eval()
    _swap_norms(fast)
    if precision == "bf16":
        layers = list(fast.net)
        stem = 2  # the reflect pad and 7x7 convolution that see the photo: kept in fp32
        assert isinstance(layers[stem - 1], nn.Conv2d), "unexpected student layout"
        body = nn.Sequential(*layers[stem:]).to(torch.bfloat16)
        fast.net = nn.Sequential(*layers[:stem], _Cast(torch.bfloat16, True), *body, _Cast(torch.float32, False))
        fast = fast.to(memory_format=torch.channels_last)
    return fast.to(device).eval().requires_grad_(False)


class _TorchRunner:
    def __init__(self, model: Student, precision: str, device: torch.device):
        self.model = inference_student(model, precision, device)
        self.device = device

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model(images.to(self.device))[:, 0].float().cpu().numpy()


class _OnnxRunner:
    def __init__(self, graph: Path, device: torch.device, threads: int | None):
        try:
            import onnxruntime
        except ImportError:
            raise ExtractError("--backend onnx needs ONNX Runtime: pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(graph), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
            raise StudentLoadError(f"{graph} is not a usable ONNX graph ({str(err).splitlines()[0]})") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        (out,) = self.session.run(None, {self.input: images.float().cpu().numpy()})
        return out[:, 0]


def _onnx_config(graph: Path) -> StudentConfig:
    """The student config of an ONNX graph: its ``student.json`` beside it, else the default."""
    import json

    config_path = graph.with_suffix(".json") if graph.name != ONNX_FILE else graph.parent / CONFIG_FILE
    if config_path.is_file():
        try:
            return StudentConfig(**json.loads(config_path.read_text())["config"])
        except (ValueError, KeyError, TypeError):
            raise StudentLoadError(f"{config_path} is not a student config") from None
    return StudentConfig()


# --------------------------------------------------------------------------------------------
# Images in
# --------------------------------------------------------------------------------------------



def cap_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(height, width) scaled so the long side is at most ``size``, keeping the aspect ratio (rounded)."""
    long_side = max(height, width)
    if size is None or long_side <= size:
        return height, width
    scale = size / long_side
    return max(1, round(height * scale)), max(1, round(width * scale))


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (over white) as (3, H, W) RGB in [0, 1].

    Integer arrays are scaled by their type's maximum (uint8: 255, uint16: 65535); float arrays
    are taken as [0, 1] and clipped.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ExtractError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    if array.dtype == np.bool_:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64), nan=1.0)
    else:
        raise ExtractError(f"an image array must hold integers or floats, not {array.dtype}")
    values = np.clip(values, 0.0, 1.0).astype(np.float32)
    if values.shape[2] == 4:
        values = values[..., :3] * values[..., 3:] + (1.0 - values[..., 3:])
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))


def to_tensor(image) -> torch.Tensor:
    """Any accepted input (a path, an image file's bytes, a PIL image, a numpy array, a (3, H, W)
    tensor) as (3, H, W) RGB in [0, 1].

    The EXIF orientation is applied where the input is encoded: a path, or bytes. A PIL image, an
    array or a tensor is taken as it is (a PIL image's EXIF tag is ignored: the caller may have
    rotated it already; ``ImageOps.exif_transpose`` uprights a PIL image opened from a file).

    Raises:
        ImageError: a path, bytes, or a PIL image, that cannot be decoded. ExtractError: an input of another type or shape.
    """
    from diffsketch.core import ImageError, read_rgb

    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(image)) as opened:
                opened.load()
                return pil_to_tensor(opened, orient=True)
        except ImageError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError... for non-images
            raise ImageError(f"the {len(image)} bytes given are not a readable image ({err}); pass a complete PNG or JPEG file's bytes") from None
    if isinstance(image, Image.Image):
        return pil_to_tensor(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ExtractError(f"an image tensor must be (3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
        return image.detach().float().cpu().clamp(0, 1)
    if isinstance(image, np.ndarray):
        return array_to_tensor(image)
    raise ExtractError(f"cannot sketch a {type(image).__name__}: give a path, an image file's bytes, a PIL image, a numpy array or a (3, H, W) tensor")


def resize_capped(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """``image`` (3, H, W) downscaled (antialiased bilinear) so its long side is at most ``size``."""
    return resize_to(image, cap_size(*image.shape[-2:], size))


def resize_to(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``image`` (3, H, W), float in [0, 1] or uint8, resized (antialiased bilinear) to ``shape`` = (height, width).

    Unchanged (and of the same type) when it has that shape already; else float32 in [0, 1].
    """
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    values = unit_float(image)
    out = F.interpolate(values[None], size=tuple(shape), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp(0, 1)


# --------------------------------------------------------------------------------------------
# Sketches out
# --------------------------------------------------------------------------------------------


def sketch_to_png(
    sketch: np.ndarray, transparent: bool = False, threshold: float | None = None, *, style: LineStyle | None = None
) -> Image.Image:
    """A (H, W) sketch in [0, 1] (1 = paper) as a PIL image ready to save as PNG.

    Args:
        sketch: the network's output for one image.
        transparent: RGBA with black ink and alpha = 1 - sketch (paper transparent) instead of grey.
        threshold: binarise first: values below it become ink (0), the others paper (1).
        style: the line controls (:class:`~diffsketch.extractor.lines.LineStyle`), instead of
            ``transparent`` and ``threshold``.

    Returns:
        Mode ``L`` (dark lines on white), ``RGB`` (other colours) or ``RGBA`` (transparent paper;
        alpha is exactly 255 minus the grey value).
    """
    if style is None:
        style = LineStyle(threshold=threshold, background="transparent" if transparent else None)
    return render(apply_lines(sketch, style), style)


SVG_THRESHOLD = 0.5  # ink below this when tracing without an explicit threshold


def sketch_to_svg(
    sketch: np.ndarray | Image.Image, threshold: float | None = None, speckle: int = 2, *, style: LineStyle | None = None
) -> str:
    """The ink of a sketch traced into SVG paths by vtracer (binary mode, splines), black on nothing.

    Args:
        sketch: (H, W) values in [0, 1] (1 = paper), or a sketch image as :func:`sketch_to_png` gives.
        threshold: ink below this value (default :data:`SVG_THRESHOLD`).
        speckle: vtracer's ``filter_speckle``: ink blobs smaller than this many pixels across are dropped.
        style: the line controls, instead of ``threshold``: the lines are binarised, cleaned and
            widened as for PNG, then traced at 0.5; the paths are filled with ``line_color`` and a
            ``background`` colour (not ``transparent``) becomes a rectangle under them.

    Returns:
        An SVG document of the sketch's size (width, height and viewBox in pixels).
    """
    try:
        import vtracer
    except ImportError:
        raise ExtractError("SVG output needs vtracer: pip install vtracer") from None
    if isinstance(sketch, Image.Image):
        values = sketch_image_values(sketch)
    else:
        values = np.clip(np.nan_to_num(np.asarray(sketch, dtype=np.float32), nan=1.0), 0.0, 1.0)
    if style is not None:
        values, threshold = apply_lines(values, style), SVG_THRESHOLD
    ink = values < (SVG_THRESHOLD if threshold is None else threshold)
    height, width = ink.shape
    buffer = io.BytesIO()
    Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("RGB").save(buffer, format="PNG")
    svg = vtracer.convert_raw_image_to_svg(
        buffer.getvalue(), img_format="png", colormode="binary", mode="spline", filter_speckle=speckle,
        corner_threshold=60, length_threshold=4.0, splice_threshold=45, path_precision=3,
    )  # fmt: skip
    start = svg.index("<svg")
    head_end = svg.index(">", start)
    head = f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
    body = svg[head_end + 1 :]
    if style is not None:
        body = body.replace('fill="#000000"', f'fill="{hex_colour(style.line_color)}"')
        if style.background is not None and not style.transparent:
            head += f'\n<rect width="{width}" height="{height}" fill="{hex_colour(style.background)}"/>'
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + head + body


def sketch_image_values(image: Image.Image) -> np.ndarray:
    """A sketch image (grey ``L`` or transparent ``RGBA`` as written by :func:`sketch_to_png`) as (H, W) in [0, 1]."""
    if image.mode == "RGBA":
        return 1.0 - np.asarray(image)[..., 3].astype(np.float32) / 255.0
    return np.asarray(image.convert("L")).astype(np.float32) / 255.0


def render_svg(svg: str, width: int | None = None, height: int | None = None) -> np.ndarray:
    """An SVG rendered to (H, W) grey values in [0, 1] on white paper (resvg), for checks and previews."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", width=width, height=height)
    with Image.open(io.BytesIO(bytes(png))) as im:
        return np.asarray(im.convert("L")).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------


class SketchExtractor:
    """A loaded student: call it on images to get sketches (see the module docstring).

    Use :meth:`load`; the instance is safe to share between threads for inference (the web page
    keeps one per style).

    Sizes: a photo is sketched at its own resolution unless ``size`` caps its long side. One
    larger than ``tile`` pixels on a side goes through the network by overlapping tiles with
    whole-image normalisation statistics (:mod:`diffsketch.extractor.tiles`), so memory stays
    bounded and the sketch equals the whole-image pass; ``tile=0`` runs every photo whole. A
    photo over ``max_megapixels`` is refused before it is decoded (:class:`TooLargeError`).
    """

    def __init__(self, runner, config: StudentConfig, meta: dict, files: ModelFiles, backend: str, precision: str,
                 device: torch.device, batch_size: int, *, student: Student | None = None, tile: int = DEFAULT_TILE,
                 max_megapixels: float | None = MAX_MEGAPIXELS):  # fmt: skip
        self._runner, self.config, self.meta, self.files = runner, config, meta, files
        self.backend, self.precision, self.device, self.batch_size = backend, precision, device, batch_size
        self.min_side = smallest_side(config)
        self.tile, self.max_megapixels = tile, max_megapixels
        self._student, self._tiled, self._tile_lock = student, None, threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        backend: str = "auto",
        *,
        precision: str = "auto",
        threads: int | str | None = None,
        batch_size: int = 8,
        tile: int = DEFAULT_TILE,
        max_megapixels: float | None = MAX_MEGAPIXELS,
    ) -> SketchExtractor:
        """Load a student from a style folder, a ``.safetensors`` file (``.json`` config beside it) or a ``.onnx`` graph.

        Args:
            path: the model (pickle checkpoints are refused).
            device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
            backend: ``auto``, ``torch`` or ``onnx`` (see the module docstring for what ``auto`` picks).
            precision: ``auto``, ``fp32`` or ``bf16`` (PyTorch only).
            threads: ``auto`` or a number: sizes this process's CPU thread pools (PyTorch, the BLAS
                libraries, ONNX Runtime) as :func:`~diffsketch.core.threads.apply_threads` does; None
                leaves them as they are (ONNX Runtime then uses as many threads as PyTorch).
            batch_size: at most this many same-size images go through one forward pass.
            tile: photos with a side over this many pixels are sketched by tiles (0: never); tiles
                need the student's safetensors weights.
            max_megapixels: photos with more pixels are refused (None: no cap).

        Raises:
            StudentLoadError: missing, unreadable or refused model files.
            ExtractError: a bad option or an unavailable device.
        """
        if batch_size < 1:
            raise ExtractError(f"--batch-size {batch_size} must be at least 1")
        _check_tile(tile)
        if max_megapixels is not None and not max_megapixels > 0:
            raise ExtractError(f"--max-megapixels {max_megapixels} must be a positive number")
        torch_device = extractor_device(device)
        threads = None if threads is None else apply_threads(threads)
        files = locate(path)
        backend, precision = choose(backend, precision, torch_device, files)
        meta: dict = {}
        if files.weights is not None:
            model, meta = load_student(files.weights, "cpu")
            config = model.config
        else:
            model, config = None, _onnx_config(files.onnx)
        if backend == "torch":
            runner = _TorchRunner(model, precision, torch_device)
        elif files.onnx is not None:
            runner = _OnnxRunner(files.onnx, torch_device, threads)
        else:
            runner = _OnnxRunner(_export_temporary(files.weights), torch_device, threads)
        return cls(runner, config, meta, files, backend, precision, torch_device, batch_size, student=model, tile=tile,
                   max_megapixels=max_megapixels)  # fmt: skip

    def __repr__(self) -> str:
        where = self.files.folder or self.files.weights or self.files.onnx
        return f"SketchExtractor({str(where)!r}, backend={self.backend!r}, precision={self.precision!r}, device={self.device.type!r})"

    # --- the core: tensors in, arrays out -----------------------------------------------------

    def needs_tiles(self, image: torch.Tensor, tile: int | None = None) -> bool:
        """True when ``image`` (3, H, W) has a side over the tile size (``tile``, else the extractor's)."""
        tile = self.tile if tile is None else tile
        return tile > 0 and max(image.shape[-2:]) > tile

    def _sketch_tiled(self, image: torch.Tensor, tile: int) -> np.ndarray:
        if self._student is None:
            height, width = image.shape[-2:]
            raise ExtractError(
                f"the image is {width}x{height} px, over the {tile} px tile side, and tiles need the student's "
                f"{WEIGHTS_FILE}; this model is an ONNX graph only: pass --tile 0 (tile=0) to sketch it whole, or cap it with --size"
            )
        with self._tile_lock:
            if self._tiled is None:
                fast = self._runner.model if isinstance(self._runner, _TorchRunner) else inference_student(self._student, "fp32", self.device)
                self._tiled = TiledStudent.build(fast, self.device)
            return self._tiled(image, tile)

    def sketch_tensors(self, images: Sequence[torch.Tensor], *, tile: int | None = None) -> list[np.ndarray]:
        """(3, H, W) RGB tensors (float in [0, 1], or uint8) -> (H, W) float32 sketches in [0, 1] (1 = paper), in order.

        Consecutive images of one size go through the network together, at most ``batch_size`` at a
        time; an image with a side over the tile size (``tile``, else the extractor's) goes alone, by tiles.

        Raises:
            ExtractError: an image smaller than the network's smallest side.
        """
        tile = self.tile if tile is None else tile
        _check_tile(tile)
        for image in images:
            if min(image.shape[-2:]) < self.min_side:
                height, width = image.shape[-2:]
                raise ExtractError(f"the image is {width}x{height} px; at least {self.min_side} px are needed on each side")
        out: list[np.ndarray] = []
        start = 0
        while start < len(images):
            if self.needs_tiles(images[start], tile):
                out.append(self._sketch_tiled(images[start], tile))
                start += 1
                continue
            end = start + 1
            while (end < len(images) and end - start < self.batch_size and images[end].shape == images[start].shape
                   and images[end].dtype == images[start].dtype
                   and not self.needs_tiles(images[end], tile)):  # fmt: skip
                end += 1
            batch = torch.stack(list(images[start:end]))
            out += list(self._runner(unit_float(batch)))
            start = end
        return out

    def prepare(self, image, size: int | None = None) -> torch.Tensor:
        """One input as the (3, H, W) tensor the network sees: loaded, converted, capped to ``size``.

        A path or bytes is checked against ``max_megapixels`` from its header, then decoded at a
        reduced size when ``size`` is at most half its long side; an 8-bit photo that needs no
        resizing stays ``uint8`` (:func:`~diffsketch.core.images.read_rgb_bounded`).

        Raises:
            TooLargeError: over the megapixel cap. ImageError: an unreadable input. ExtractError: a bad ``size``.
        """
        if size is not None and size < 1:
            raise ExtractError(f"size {size} must be a positive number of pixels")
        if isinstance(image, (str, os.PathLike, bytes, bytearray)):
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"the {len(image)} bytes given"
            height, width = core_images.image_size(image)
            check_megapixels(height, width, self.max_megapixels, name)
            return resize_to(core_images.read_rgb_bounded(image, max_side=size), cap_size(height, width, size))
        tensor = to_tensor(image)
        check_megapixels(*tensor.shape[-2:], self.max_megapixels)
        return resize_capped(tensor, size)

    def arrays(self, images, size: int | None = None, *, tile: int | None = None) -> list[np.ndarray]:
        """Sketches as (H, W) float32 arrays in [0, 1] for a list of inputs (one at a time when tiled)."""
        out = []
        pending: list[torch.Tensor] = []
        for image in images:
            tensor = self.prepare(image, size)
            if self.needs_tiles(tensor, tile):
                out += self.sketch_tensors(pending, tile=tile) + self.sketch_tensors([tensor], tile=tile)
                pending = []
            else:
                pending.append(tensor)
        return out + self.sketch_tensors(pending, tile=tile)

    # --- the public calls -----------------------------------------------------------------------

    def __call__(
        self,
        images,
        *,
        size: int | None = None,
        threshold: float | None = None,
        transparent: bool = False,
        line_width: float = 1.0,
        binarize: tuple[float, float] | str | None = None,
        min_speck: int = 0,
        line_color: str = "black",
        background: str | None = None,
        tile: int | None = None,
    ):
        """Sketch one image or a list of them.

        Args:
            images: a path, an image file's bytes, a PIL image, a numpy array ((H, W), (H, W, 3),
                (H, W, 4); uint8, uint16 or float in [0, 1]), a (3, H, W) tensor, or a list (or
                tuple) of these. The EXIF orientation is applied to paths and bytes only: a PIL
                image is taken as it is, even when it carries an EXIF orientation tag (upright a
                photo opened with ``Image.open`` by ``ImageOps.exif_transpose``).
            size: cap on the long side: larger images are downscaled (antialiased) first, and
                their sketch has the reduced size. None: the input's own size (native resolution,
                by tiles when a side is over the tile size).
            threshold: binarise at this value in [0, 1] (below = ink).
            transparent: RGBA (alpha = 1 - sketch) instead of grey; the same as ``background="transparent"``.
            line_width: stroke width factor (1: as drawn; 3: strokes 2 px wider; 0.5: thinner).
            binarize: hysteresis thresholds ``(low, high)`` (or ``"low,high"``) instead of ``threshold``.
            min_speck: remove ink specks of fewer pixels than this.
            line_color: the ink colour (a name, ``#RRGGBB``, ``rgb(r, g, b)``).
            background: the paper colour, or ``transparent``; None: white.
            tile: the tile side for this call (0: whole); None: the extractor's.

        Returns:
            A PIL image (mode ``L``, ``RGB`` or ``RGBA``) per input: one image for one input, a list for a list.
        """
        style = line_style(threshold, transparent, line_width, binarize, min_speck, line_color, background)
        single = not isinstance(images, (list, tuple))
        sketches = self.arrays([images] if single else list(images), size, tile=tile)
        pictures = [sketch_to_png(s, style=style) for s in sketches]
        return pictures[0] if single else pictures

    def svg(
        self,
        images,
        *,
        size: int | None = None,
        threshold: float | None = None,
        line_width: float = 1.0,
        binarize: tuple[float, float] | str | None = None,
        min_speck: int = 0,
        line_color: str = "black",
        background: str | None = None,
        tile: int | None = None,
    ):
        """The sketch of one image (or of each in a list) traced into an SVG document (str), see :func:`sketch_to_svg`.

        The options are those of :meth:`__call__`; ``background`` None or ``transparent`` leaves the paper out.
        """
        style = line_style(threshold, False, line_width, binarize, min_speck, line_color, background)
        single = not isinstance(images, (list, tuple))
        sketches = self.arrays([images] if single else list(images), size, tile=tile)
        documents = [sketch_to_svg(s, style=style) for s in sketches]
        return documents[0] if single else documents

    def sketch_video(self, source, target, *, size: int | None = None, temporal=True, threshold: float | None = None,
                     progress: bool = False) -> VideoReport:  # noqa: F821 - video.py imports this module  # fmt: skip
        """Sketch the video file ``source`` (mp4, mov, mkv, webm, gif) into ``target``, streaming;
        :func:`diffsketch.extractor.video.sketch_video` with this extractor.

        Returns:
            The run's frames, frame rate, flicker and lag.
        """
        from diffsketch.extractor.video import sketch_video

        return sketch_video(self, source, target, size=size, temporal=temporal, threshold=threshold, progress=progress)


def line_style(
    threshold: float | None = None,
    transparent: bool = False,
    line_width: float = 1.0,
    binarize: tuple[float, float] | str | None = None,
    min_speck: int = 0,
    line_color: str = "black",
    background: str | None = None,
) -> LineStyle:
    """The :class:`~diffsketch.extractor.lines.LineStyle` of the API's and the CLI's options, checked.

    Raises:
        ExtractError: an option out of range, two that contradict each other, or a colour that is not one.
    """
    _check_threshold(threshold)
    if transparent:
        if background not in (None, "transparent"):
            raise ExtractError(f"--transparent and --background {background} contradict each other; give one of them")
        background = "transparent"
    try:
        return LineStyle(line_width, threshold, binarize, min_speck, line_color, background)
    except LineStyleError as err:
        raise ExtractError(str(err)) from None


def _check_tile(tile: int) -> None:
    if not isinstance(tile, int) or tile < 0:
        raise ExtractError(f"--tile {tile} must be a number of pixels, or 0 to sketch every photo whole")


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ExtractError(f"--threshold {threshold} must be between 0 and 1")


def _export_temporary(weights: Path) -> Path:
    """Export a bare safetensors student to ONNX in a temporary folder (for ``backend="onnx"``)."""
    from diffsketch.student import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="diffsketch-onnx-"))
    return export_onnx(weights, folder / ONNX_FILE, check=False)

