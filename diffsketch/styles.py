"""The example sketch: built-in line styles, and loading / saving the user's image and drawing files.

DiffSketch learns a style from ONE (image, sketch) pair. The sketch is either a drawing the user
made of the image (``example.sketch`` = a file path), or one of the built-in ``STYLES`` applied to
the image:

- ``xdog``: the XDoG the DiffSketch authors used (Gary Grossi's variant, their parameters),
- ``canny``: Canny edges as black lines on white,
- ``dog``: a soft difference-of-Gaussians line drawing,
- ``hed``: the HED edge network as DiffSketch ran it (needs ``network-bsds500.pytorch``),
- ``anime``: the Informative Drawings generator (needs ``anime_style/netG_A_latest.pth``).

Conventions: images are float tensors in [0, 1]; a photo / source image is ``(3, H, W)``; a sketch
is ``(1, H, W)`` with 1 = white paper and 0 = black ink. Every expected failure (a missing or
broken file, a drawing whose shape does not fit the photo, weights that are missing or do not fit
the network) raises :class:`StyleError`, whose message names the file or parameter, the problem
and the fix.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy.ndimage import gaussian_filter
from torch import nn

log = logging.getLogger(__name__)

STYLES = ("xdog", "canny", "dog", "hed", "anime")
ASPECT_TOLERANCE = 0.01  # a drawing's aspect ratio (width / height) may differ from its photo's by 1% of the latter

# Pillow decodes any of these errors from a missing, unreadable, truncated or non-image file.
_READ_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class StyleError(ValueError):
    """An example image, drawing or style cannot be used; the message names the file or param and the fix."""


# --------------------------------------------------------------------------------------------
# Built-in weight-free styles
# --------------------------------------------------------------------------------------------


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected an RGB image tensor of shape (3, H, W), got {shape}")


def _luma(image: torch.Tensor) -> np.ndarray:
    """Grey (H, W) float64 in [0, 1]: ITU-R 601 luma, the weights PIL's ``convert("L")`` uses."""
    rgb = image.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64)
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _as_sketch(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(H, W) array -> (1, H, W) float32 tensor in [0, 1] on ``like``'s device."""
    out = torch.from_numpy(np.clip(values, 0.0, 1.0).astype(np.float32))
    return out.unsqueeze(0).to(like.device)


def _xdog_grey(image: torch.Tensor) -> np.ndarray:
    """The grey image DiffSketch feeds its XDoG: the mean of the 8-bit R, G, B, truncated to uint8.

    The authors take ``mean(image * 255)`` over channels and cast it with ``astype(np.uint8)``
    (truncation). The RGB values are rounded to 8 bits first, so that float noise in an image that
    came from an 8-bit file does not knock a level off.
    """
    rgb8 = np.rint(image.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64) * 255.0)
    return np.floor(rgb8.mean(axis=0) + 1e-9)


def _blur_like_opencv_uint8(grey: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur matching ``cv2.GaussianBlur(uint8_image, (0, 0), sigma)``.

    For 8-bit images OpenCV cuts the kernel at 3 sigma (ksize = round(6 sigma + 1), odd), mirrors at
    the border without repeating the edge pixel (BORDER_REFLECT_101 = scipy's ``mirror``), and
    returns uint8, i.e. the result rounded to whole grey levels.
    """
    return np.rint(gaussian_filter(grey, sigma, mode="mirror", truncate=3.0))


def xdog(
    image: torch.Tensor,
    *,
    sigma: float = 0.5,
    k: float = 200.0,
    gamma: float = 0.98,
    epsilon: float = 0.1,
    phi: float = 10.0,
) -> torch.Tensor:
    """The XDoG style DiffSketch's authors used (Gary Grossi's XDoG, with the authors' parameters).

    On the grey mean of the 8-bit RGB image (values 0-255)::

        D = (G_sigma - gamma * G_{k sigma}) / 255
        out = 1                          where D >= epsilon
              1 + tanh(phi (D - epsilon))  elsewhere

    Both blurs are rounded to whole grey levels, as OpenCV's 8-bit ``GaussianBlur`` in the authors'
    code does. With k = 200 the second blur (sigma 100) is a local average, so the style keeps
    white only where a pixel is clearly brighter than its surroundings: flat areas come out grey
    (1 + tanh(phi ((1 - gamma) v / 255 - epsilon)), about 0.34 for white and 0.24 for black), dark
    regions near black. The result is clipped to [0, 1].

    Args:
        image: (3, H, W) RGB in [0, 1].
        sigma: standard deviation of the small Gaussian, in pixels.
        k: ratio of the large Gaussian's sigma to ``sigma``.
        gamma: weight of the large Gaussian.
        epsilon: threshold on D (D is in units of the full 0-255 range).
        phi: steepness of the tanh ramp below the threshold.

    Returns:
        (1, H, W) float32 sketch in [0, 1].
    """
    _check_image(image)
    grey = _xdog_grey(image)
    d = (_blur_like_opencv_uint8(grey, sigma) - gamma * _blur_like_opencv_uint8(grey, sigma * k)) / 255.0
    out = np.where(d >= epsilon, 1.0, 1.0 + np.tanh(phi * (d - epsilon)))
    return _as_sketch(out, image)


def canny(image: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Canny edges (``skimage.feature.canny`` on the luma image) as black 1-pixel lines on white.

    Args:
        image: (3, H, W) RGB in [0, 1].
        sigma: standard deviation of the Gaussian smoothing before edge detection.

    Returns:
        (1, H, W) float32 sketch: 0 on edges, 1 elsewhere.
    """
    from skimage.feature import canny as skimage_canny  # imported here: skimage is slow to import

    _check_image(image)
    edges = skimage_canny(_luma(image), sigma=sigma)
    return _as_sketch(1.0 - edges.astype(np.float64), image)


def dog(image: torch.Tensor, sigma: float = 1.0, k: float = 1.6, phi: float = 50.0) -> torch.Tensor:
    """A soft difference-of-Gaussians line drawing: dark lines on white.

    With D = G_sigma - G_{k sigma} of the luma image (in [0, 1]), the output is
    ``1 + tanh(phi * min(D, 0))``: white where D >= 0, and darkening smoothly along the dark side
    of each edge, where D dips below zero. Strong edges give near-black lines, faint ones grey.

    Args:
        image: (3, H, W) RGB in [0, 1].
        sigma: standard deviation of the small Gaussian (line width), in pixels.
        k: ratio of the large Gaussian's sigma to ``sigma`` (1.6 approximates a Laplacian of Gaussian).
        phi: line darkness: larger values turn weaker edges into darker lines.

    Returns:
        (1, H, W) float32 sketch in [0, 1].
    """
    _check_image(image)
    grey = _luma(image)
    d = gaussian_filter(grey, sigma, mode="mirror") - gaussian_filter(grey, sigma * k, mode="mirror")
    return _as_sketch(1.0 + np.tanh(phi * np.minimum(d, 0.0)), image)


# --------------------------------------------------------------------------------------------
# Network styles: HED and Informative Drawings (the user supplies the weights)
# --------------------------------------------------------------------------------------------


def _vgg_stage(in_channels: int, out_channels: int, convs: int, pool: bool) -> nn.Sequential:
    """One VGG16 stage: an optional 2x2 max-pool, then ``convs`` 3x3 conv + ReLU pairs."""
    layers: list[nn.Module] = [nn.MaxPool2d(kernel_size=2, stride=2)] if pool else []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers)


class HED(nn.Module):
    """Holistically-nested edge detection, in the layout of sniklaus/pytorch-hed (BSDS500 weights).

    Five VGG16 stages; each stage's features give a side output through a 1x1 conv, upsampled
    (bilinear) to the input size; a 1x1 conv with a sigmoid fuses them into an edge probability.
    Attribute names match pytorch-hed's state dict (``netVggOne`` ... ``netScoreOne`` ...
    ``netCombine``), so its ``network-bsds500.pytorch`` loads with ``strict=True`` (after the
    ``module`` -> ``net`` renaming pytorch-hed itself applies, see :func:`_load_weights`).

    DiffSketch's variant, reproduced here: the fuse conv is fed the side outputs of stages
    [1, 2, 3, 2, 1] instead of [1, 2, 3, 4, 5] (stages 4 and 5 are computed but unused, which keeps
    the lines fine), and the input is given in RGB order although the network's mean subtraction
    (and training) expects BGR.
    """

    BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # Caffe HED's mean pixel, 0-255 scale

    def __init__(self) -> None:
        super().__init__()
        self.netVggOne = _vgg_stage(3, 64, 2, pool=False)
        self.netVggTwo = _vgg_stage(64, 128, 2, pool=True)
        self.netVggThr = _vgg_stage(128, 256, 3, pool=True)
        self.netVggFou = _vgg_stage(256, 512, 3, pool=True)
        self.netVggFiv = _vgg_stage(512, 512, 3, pool=True)
        self.netScoreOne = nn.Conv2d(64, 1, 1)
        self.netScoreTwo = nn.Conv2d(128, 1, 1)
        self.netScoreThr = nn.Conv2d(256, 1, 1)
        self.netScoreFou = nn.Conv2d(512, 1, 1)
        self.netScoreFiv = nn.Conv2d(512, 1, 1)
        self.netCombine = nn.Sequential(nn.Conv2d(5, 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] (RGB, as DiffSketch passed it) -> (N, 1, H, W) edge probability."""
        size = x.shape[-2:]
        mean = torch.tensor(self.BGR_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        one = self.netVggOne(x * 255.0 - mean)
        two = self.netVggTwo(one)
        three = self.netVggThr(two)
        # Stages 4 and 5 (netVggFou/Fiv, netScoreFou/Fiv) exist for the checkpoint but the
        # DiffSketch combination below does not use them, so they are not run.

        def side(score: nn.Module, features: torch.Tensor) -> torch.Tensor:
            return nn.functional.interpolate(score(features), size=size, mode="bilinear", align_corners=False)

        s1, s2, s3 = side(self.netScoreOne, one), side(self.netScoreTwo, two), side(self.netScoreThr, three)
        return self.netCombine(torch.cat([s1, s2, s3, s2, s1], dim=1))


class _ResidualBlock(nn.Module):
    """Informative Drawings' residual block: two reflection-padded 3x3 convs with instance norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class InformativeDrawings(nn.Module):
    """The Informative Drawings generator (Chan, Durand, Isola 2022), ``Generator(3, 1, n_residual_blocks=3)``.

    A reflection-padded 7x7 conv to 64 channels, two stride-2 3x3 convs (128, 256), residual blocks,
    two stride-2 transposed convs (128, 64), a reflection-padded 7x7 conv to one channel and a
    sigmoid; instance norm (no learned parameters) and ReLU after every inner conv. The module and
    index layout (``model0`` ... ``model4``) matches carolineec/informative-drawings, so its
    ``netG_A_latest.pth`` files load with ``strict=True``. Input RGB in [0, 1]; output a drawing in
    [0, 1] with dark lines on white.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 1, n_residual_blocks: int = 3) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(input_nc, 64, 7), nn.InstanceNorm2d(64), nn.ReLU())
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.InstanceNorm2d(256), nn.ReLU(),
        )  # fmt: skip
        self.model2 = nn.Sequential(*[_ResidualBlock(256) for _ in range(n_residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(128), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, output_nc, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H', W') drawing (H' = H when H is a multiple of 4)."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


# How to get each network style's weights, for the error messages.
_WEIGHTS_HELP = {
    "hed": (
        "the HED network's BSDS500 weights: download pytorch-hed's network-bsds500.pytorch "
        "(http://content.sniklaus.com/github/pytorch-hed/network-bsds500.pytorch, see github.com/sniklaus/pytorch-hed)"
    ),
    "anime": (
        "the Informative Drawings anime-style generator: anime_style/netG_A_latest.pth from the pretrained "
        "model.zip linked in github.com/carolineec/informative-drawings"
    ),
}
_NETWORKS = {"hed": HED, "anime": InformativeDrawings}


def _weights_error(name: str, problem: str, param: str = "example.style_weights") -> StyleError:
    return StyleError(f"{problem}; style '{name}' needs {_WEIGHTS_HELP[name]}, and {param} set to its path")


def _rename_keys(name: str, state: dict) -> dict:
    """Map the original checkpoints' key names onto this module's.

    pytorch-hed's file uses an older naming (``moduleVggOne.0.weight``), which pytorch-hed renames
    ``module`` -> ``net`` when loading; checkpoints saved from ``nn.DataParallel`` carry a
    ``module.`` prefix.
    """
    renamed = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if name == "hed" and key.startswith("module"):
            key = "net" + key[len("module") :]
        renamed[key] = value
    return renamed


@functools.lru_cache(maxsize=2)
def _load_network(name: str, path: str, mtime_ns: int, param: str) -> nn.Module:
    """Build the ``name`` network and load ``path`` into it strictly (cached per file version)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise _weights_error(name, f"{param}={path} could not be read as a PyTorch checkpoint ({err})", param) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _weights_error(name, f"{param}={path} does not hold a state dict of tensors", param)
    network = _NETWORKS[name]()
    try:
        network.load_state_dict(_rename_keys(name, state), strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise _weights_error(name, f"{param}={path} does not fit the {name} network: {detail}", param) from None
    return network.eval()


def _network_style(name: str, image: torch.Tensor, weights: str | None, param: str) -> torch.Tensor:
    if weights is None:
        raise _weights_error(name, f"no weights given for style '{name}'", param)
    path = Path(weights).expanduser()
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise _weights_error(name, f"{param}={weights} {problem}", param)
    network = _load_network(name, str(path.resolve()), path.stat().st_mtime_ns, param).to(image.device)
    x = image.detach().float().clamp(0, 1).unsqueeze(0)
    with torch.no_grad():
        out = network(x)
        if name == "hed":
            out = 1.0 - out  # edge probability -> dark lines on white, as DiffSketch does
        if out.shape[-2:] != x.shape[-2:]:  # the generator needs sides divisible by 4
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out[0].clamp(0, 1)


def apply_style(name: str, image: torch.Tensor, weights: str | None = None, param: str = "example.style_weights") -> torch.Tensor:
    """Draw ``image`` in the built-in style ``name`` (one of ``STYLES``).

    Args:
        name: ``xdog``, ``canny`` or ``dog`` (no weights), or ``hed`` / ``anime`` (need ``weights``).
        image: (3, H, W) RGB in [0, 1].
        weights: path of the network's checkpoint for ``hed`` / ``anime`` (``example.style_weights``).
        param: the parameter that gave ``weights``, named in error messages.

    Returns:
        (1, H, W) float32 sketch in [0, 1] (dark lines on white) on the image's device.

    Raises:
        StyleError: an unknown style, or missing / unreadable / mismatched weights.
    """
    _check_image(image)
    if name == "xdog":
        return xdog(image)
    if name == "canny":
        return canny(image)
    if name == "dog":
        return dog(image)
    if name in _NETWORKS:
        return _network_style(name, image, weights, param)
    raise StyleError(
        f"unknown sketch style {name!r} (example.sketch); use one of {', '.join(STYLES)}, or the path of a drawing file"
    )


# --------------------------------------------------------------------------------------------
# Loading and saving files
# --------------------------------------------------------------------------------------------

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


def _open(path: str | Path, param: str | None) -> Image.Image:
    """Open and fully decode an image file (EXIF rotation applied), or raise StyleError."""
    path = Path(path)
    fix = _fix(param)
    if not path.exists():
        raise StyleError(f"{path} does not exist; {fix}")
    if not path.is_file():
        raise StyleError(f"{path} is not a file; {fix}")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except _READ_ERRORS as err:
        raise StyleError(f"{path} could not be read as an image ({err}); re-save it as PNG, or {fix}") from None


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
        StyleError: a missing path, a folder, a non-image, or a corrupt / truncated file.
    """
    path = Path(path)
    fix = _fix(param)
    if not path.exists():
        raise StyleError(f"{path} does not exist; {fix}")
    if not path.is_file():
        raise StyleError(f"{path} is not a file; {fix}")
    try:
        with Image.open(path) as im:
            im.verify()  # must come straight after open
        with Image.open(path) as im:
            width, height = im.size
            if _orientation(im) in (5, 6, 7, 8):
                width, height = height, width
    except _READ_ERRORS as err:
        raise StyleError(f"{path} is not a readable image ({err}); re-save it as PNG, or {fix}") from None
    return height, width


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
        raise StyleError(f"{path}: cannot convert PIL mode {im.mode} to RGB ({err}); re-save it as an RGB PNG") from None


def _rgb_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 1 or 3) pixels -> a (3, H, W) tensor, grey spread to three equal channels."""
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


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
        StyleError: a missing, unreadable, truncated or non-image file.
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
        StyleError: a missing, unreadable, truncated or non-image file.
    """
    return _rgb_tensor(_decoded(path, param))


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
        StyleError: an unreadable file, or a drawing whose aspect ratio does not fit the source image.
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
        raise StyleError(f"{path} is {width}x{height} (aspect {aspect:.2f}) but {source}; {fix}")
    try:
        pixels = _pixels(im)
    except (ValueError, OSError) as err:
        raise StyleError(f"{path}: cannot convert PIL mode {im.mode} to grey ({err}); re-save it as a grey PNG") from None
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
    _check_image(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(_to_uint8(image).transpose(1, 2, 0))).save(path, format="PNG")
