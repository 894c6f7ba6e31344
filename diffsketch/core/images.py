"""The one image loader: photos and drawings from files, checked, EXIF-rotated, in any PIL mode.

Every stage that reads a picture from disk goes through here (the example pair, the evaluation
photos, the extractor), so they all see the same pixels: EXIF orientation applied, palette and
16-bit modes converted, transparency composited over white, and a clear :class:`ImageError` for a
missing, unreadable or truncated file.

Conventions: images are float tensors in [0, 1]; a photo is ``(3, H, W)``; a sketch is
``(1, H, W)`` with 1 = white paper and 0 = black ink.

Example:
    >>> from diffsketch.core.images import square_box
    >>> square_box(640, 480)
    (80, 0, 560, 480)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from diffsketch.core.errors import DiffsketchError

log = logging.getLogger(__name__)

# Pillow decodes any of these errors from a missing, unreadable, truncated or non-image file.
READ_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


ASPECT_TOLERANCE = 0.01  # a drawing's aspect ratio (width / height) may differ from its photo's by 1% of the latter


class ImageError(DiffsketchError, ValueError):
    """An image or drawing file cannot be used; the message names the file or param, the problem and the fix."""


def check_rgb(image: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is an RGB tensor of shape (3, H, W)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an RGB image tensor of shape (3, H, W), got {shape}")



_ORIENTATION_TAG = 0x0112  # EXIF orientation; values 5-8 mean the picture is stored rotated by 90 degrees


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square crop of a ``width`` x ``height`` picture, as a PIL box (left, top, right, bottom).

    Shared by photos and drawings, so a drawing and the photo it was made from are cropped alike.
    """
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return left, top, left + side, top + side


def _fix(param: str | None) -> str:
    """The fix for an unreadable file, naming the parameter that gave it when known."""
    return f"set {param} to a readable PNG or JPEG file" if param else "use a readable PNG or JPEG file"


def _existing_file(path: str | Path, param: str | None) -> tuple[Path, str]:
    """``path`` as a Path and the fix for an unreadable file; ImageError when it is missing or not a file."""
    path, fix = Path(path), _fix(param)
    if not path.exists():
        raise ImageError(f"{path} does not exist; {fix}")
    if not path.is_file():
        raise ImageError(f"{path} is not a file; {fix}")
    return path, fix


def _open(path: str | Path, param: str | None) -> Image.Image:
    """Open and fully decode an image file (EXIF rotation applied), or raise ImageError."""
    path, fix = _existing_file(path, param)
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except READ_ERRORS as err:
        raise ImageError(f"{path} could not be read as an image ({err}); re-save it as PNG, or {fix}") from None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = upright), read without decoding the pixels.

    A PNG whose EXIF chunk comes after the pixel data would need a full decode to find it; such
    files are rare, and are taken as upright here.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    return int(im.getexif().get(_ORIENTATION_TAG, 1))


def check_image_file(path: str | Path, param: str | None = None) -> tuple[int, int]:
    """Cheaply check that ``path`` is a readable image, without decoding its pixels.

    Used to fail early, before the diffusion model is loaded. Checks the file exists, is a file,
    that PIL recognises it and that its structure verifies (``Image.verify``, which for PNG checks
    the chunk CRCs and catches truncation).

    Args:
        path: the image file.
        param: the parameter that named it (e.g. ``example.sketch``), for the error message.

    Returns:
        (height, width) as displayed, i.e. after the EXIF orientation.

    Raises:
        ImageError: a missing path, a folder, a non-image, or a corrupt / truncated file.
    """
    path, fix = _existing_file(path, param)
    try:
        with Image.open(path) as im:
            im.verify()  # must come straight after open
    except READ_ERRORS as err:
        raise ImageError(f"{path} is not a readable image ({err}); re-save it as PNG, or {fix}") from None
    return image_size(path, param=param)


def _pixels(im: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 (H, W, C) in [0, 1], C = 1 (grey modes) or 3 (colour).

    Transparency is composited on white paper. 16-bit modes (``I;16*`` and ``I``, as 16-bit PNGs
    open) are divided by 65535; float ``F`` is taken as [0, 1], or divided by its maximum if that
    is above 1; mode ``1`` gives 0 / 1.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(im).astype(np.float64) / 65535.0
        return np.clip(grey, 0, 1)[..., None].astype(np.float32)
    if mode == "F":
        grey = np.nan_to_num(np.asarray(im).astype(np.float64))
        if grey.max() > 1.0:
            grey = grey / grey.max()
        return np.clip(grey, 0, 1)[..., None].astype(np.float32)
    grey_like = mode in ("1", "L", "LA", "La") or (mode in ("P", "PA") and _palette_is_grey(im))
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("LA" if grey_like else "RGBA")).astype(np.float32) / 255.0
        colour, alpha = rgba[..., :-1], rgba[..., -1:]
        return colour * alpha + (1.0 - alpha)  # over white paper
    return np.asarray(im.convert("L" if grey_like else "RGB")).astype(np.float32).reshape(im.height, im.width, -1) / 255.0


def _palette_is_grey(im: Image.Image) -> bool:
    palette = im.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(len(rgb)) and bool((rgb == rgb[:, :1]).all())


def _crop_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (H, W, C) to a square (:func:`square_box`) and resize it to ``size`` (Lanczos, antialiased)."""
    height, width = pixels.shape[:2]
    box = square_box(width, height)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32)).resize(
            (size, size), Image.Resampling.LANCZOS, box=box
        ))
        for c in range(pixels.shape[2])
    ]  # fmt: skip
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _decoded(path: str | Path, param: str | None) -> np.ndarray:
    """The file's pixels (H, W, 1 or 3) in [0, 1], EXIF-rotated, any mode converted."""
    im = _open(path, param)
    try:
        return _pixels(im)
    except (ValueError, OSError) as err:
        raise ImageError(f"{path}: cannot convert PIL mode {im.mode} to RGB ({err}); re-save it as an RGB PNG") from None


def _rgb_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 1 or 3) pixels -> a (3, H, W) tensor, grey spread to three equal channels."""
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def pil_to_tensor(image: Image.Image, *, orient: bool = False) -> torch.Tensor:
    """A PIL image (any mode) as (3, H, W) RGB in [0, 1], its modes converted as files are read.

    The pixels are taken as they are: a PIL image's EXIF orientation tag is ignored, since the
    caller may have rotated the image already (``Image.rotate`` and ``ImageOps.exif_transpose``
    results can still carry the tag). ``orient=True`` applies the tag first, for an image just
    decoded from a file or from bytes.

    Raises:
        ImageError: the image cannot be decoded (``Image.open`` reads only the header, so a truncated
            or damaged file opened that way fails here) or converted.
    """
    try:
        return _rgb_tensor(_pixels(ImageOps.exif_transpose(image) if orient else image))
    except READ_ERRORS as err:
        name = getattr(image, "filename", "") or f"the {image.width}x{image.height} PIL image (mode {image.mode})"
        raise ImageError(f"{name} could not be decoded ({err}); pass a complete, readable image") from None


def load_image(path: str | Path, size: int, *, param: str | None = "example.image") -> torch.Tensor:
    """Load a photo as RGB in [0, 1], centre-cropped to a square and resized to ``size`` x ``size``.

    Any PIL mode is accepted: transparency (RGBA, LA, palette with transparency) is composited on
    white, grey and 16-bit / float images are spread to three equal channels, CMYK / YCbCr are
    converted to RGB. The EXIF orientation is applied.

    Args:
        path: the image file.
        size: side of the square output, in pixels.
        param: the parameter that named the file, for error messages.

    Returns:
        (3, size, size) float32 tensor in [0, 1].

    Raises:
        ImageError: a missing, unreadable, truncated or non-image file.
    """
    return _rgb_tensor(_crop_resize(_decoded(path, param), size))


def read_rgb(path: str | Path, *, param: str | None = None) -> torch.Tensor:
    """Load an image file as RGB in [0, 1] at its own size: no crop, no resize.

    The EXIF orientation is applied (the size is the displayed one) and any PIL mode is converted
    as in :func:`load_image`: transparency over white, grey / 16-bit / float spread to three equal
    channels, CMYK / YCbCr to RGB.

    Args:
        path: the image file.
        param: the parameter that named the file, for error messages (None: no parameter).

    Returns:
        (3, H, W) float32 tensor in [0, 1].

    Raises:
        ImageError: a missing, unreadable, truncated or non-image file.
    """
    return _rgb_tensor(_decoded(path, param))


_EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV")


def image_size(source: str | Path | bytes, *, param: str | None = None) -> tuple[int, int]:
    """(height, width) of an image file (a path, or a file's bytes) as displayed, from its header only.

    Raises:
        ImageError: a missing path, a folder, or data PIL does not recognise as an image.
    """
    import io

    if isinstance(source, (bytes, bytearray)):
        name, fix, opened = f"the {len(source)} bytes given are", "pass a complete PNG or JPEG file's bytes", io.BytesIO(source)
    else:
        path, fix = _existing_file(source, param)
        name, opened = f"{path} is", path
    try:
        with Image.open(opened) as im:
            width, height = im.size
            if _orientation(im) in (5, 6, 7, 8):
                width, height = height, width
    except READ_ERRORS as err:
        raise ImageError(f"{name} not a readable image ({err}); {fix}") from None
    return height, width


def read_rgb_bounded(source: str | Path | bytes, *, max_side: int | None = None, param: str | None = None) -> torch.Tensor:
    """An image file (a path, or a file's bytes) as a (3, H, W) tensor, decoded with bounded memory.

    Like :func:`read_rgb` (EXIF orientation applied, any PIL mode), with two differences that keep a
    large photo small in memory:

    - 8-bit pictures without transparency stay 8-bit: a ``uint8`` tensor (divide by 255 for
      [0, 1]); others (transparency, 16-bit, float) are float32 in [0, 1] as :func:`read_rgb` gives.
    - with ``max_side``, a picture whose long side is at least twice ``max_side`` is decoded at a
      reduced size, never below ``max_side``: JPEG by its DCT scaling (``Image.draft``), other
      formats by whole-pixel box averaging (``Image.reduce``). The caller resizes to the exact size.

    Raises:
        ImageError: a missing, unreadable, truncated or non-image file.
    """
    import io
    import math

    if isinstance(source, (bytes, bytearray)):
        name, fix, opened = f"the {len(source)} bytes given", "pass a complete PNG or JPEG file's bytes", io.BytesIO(source)
    else:
        path, fix = _existing_file(source, param)
        name, opened, fix = str(path), path, f"re-save it as PNG, or {fix}"
    try:
        with Image.open(opened) as im:
            if max_side is not None and max(im.size) >= 2 * max_side:
                scale = max_side / max(im.size)
                if im.format == "JPEG":
                    im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))
                im.load()
                factor = max(im.size) // max_side
                if factor >= 2 and im.mode in ("L", "RGB", "CMYK", "RGBA", "LA", "I", "F"):
                    im = im.reduce(factor)
            else:
                im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in _EIGHT_BIT_MODES and "transparency" not in im.info:
                return torch.from_numpy(np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy())
            return _rgb_tensor(_pixels(im))
    except READ_ERRORS as err:
        raise ImageError(f"{name} could not be read as an image ({err}); {fix}") from None


def load_sketch(
    path: str | Path,
    size: int,
    source_shape: tuple[int, int] | None = None,
    *,
    param: str | None = "example.sketch",
) -> torch.Tensor:
    """Load a drawing as one channel in [0, 1] (1 = paper), cropped like its photo and resized to ``size``.

    Any PIL mode is accepted: transparency on white, colour -> luma (ITU-R 601), 16-bit / 65535,
    float as [0, 1] (or / max when above 1), mode ``1`` -> 0 / 1. The EXIF orientation is applied.

    The drawing must have the shape of the image it was drawn from: with ``source_shape`` (the
    photo's original (height, width)), the aspect ratios must agree within 1%; without it (a
    generated, square source image), the drawing must be square within 1%. It is then centre-cropped
    with :func:`square_box` exactly as :func:`load_image` crops the photo, and resized. A drawing
    that is mostly dark (mean < 0.5) is probably inverted (white lines on black); a warning is
    logged, but the drawing is not changed.

    Args:
        path: the drawing file.
        size: side of the square output, in pixels.
        source_shape: (height, width) of the photo it was drawn from, or None for a square generated image.
        param: the parameter that named the file, for error messages.

    Returns:
        (1, size, size) float32 tensor in [0, 1].

    Raises:
        ImageError: an unreadable file, or a drawing whose aspect ratio does not fit the source image.
    """
    im = _open(path, param)
    width, height = im.size
    aspect = width / height
    if source_shape is not None:
        src_h, src_w = source_shape
        src_aspect = src_w / src_h
        source = f"the source image is {src_w}x{src_h} (aspect {src_aspect:.2f})"
        fix = "crop or pad the drawing to the source's aspect ratio, or use the photo the drawing was made from"
    else:
        src_aspect = 1.0
        source = "the source image is square (generated from example.prompt)"
        fix = "crop the drawing to a square, or set example.image to the photo it was drawn from"
    if abs(aspect - src_aspect) > ASPECT_TOLERANCE * src_aspect + 1e-9:
        raise ImageError(f"{path} is {width}x{height} (aspect {aspect:.2f}) but {source}; {fix}")
    try:
        pixels = _pixels(im)
    except (ValueError, OSError) as err:
        raise ImageError(f"{path}: cannot convert PIL mode {im.mode} to grey ({err}); re-save it as a grey PNG") from None
    if pixels.shape[2] == 3:
        pixels = pixels @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
    sketch = _crop_resize(pixels, size)[..., 0]
    if sketch.mean() < 0.5:
        log.warning(
            "%s is mostly dark (mean %.2f): sketches are expected as dark lines on a white background; "
            "if it is white lines on black, invert it",
            path,
            sketch.mean(),
        )
    return torch.from_numpy(np.ascontiguousarray(sketch)).unsqueeze(0)


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return np.rint(tensor.detach().float().clamp(0, 1).cpu().numpy() * 255.0).astype(np.uint8)


def save_sketch(sketch: torch.Tensor, path: str | Path) -> None:
    """Write a (1, H, W) sketch in [0, 1] as an 8-bit grey PNG (parent folders are created)."""
    if sketch.ndim != 3 or sketch.shape[0] != 1:
        raise ValueError(f"expected a sketch tensor of shape (1, H, W), got {tuple(sketch.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(sketch[0])).save(path, format="PNG")


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Write a (3, H, W) image in [0, 1] as an RGB PNG (parent folders are created)."""
    check_rgb(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(_to_uint8(image).transpose(1, 2, 0))).save(path, format="PNG")
