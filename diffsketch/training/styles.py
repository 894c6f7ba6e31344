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
from scipy.ndimage import gaussian_filter
from torch import nn

from diffsketch.core import ImageError, check_rgb

log = logging.getLogger(__name__)

STYLES = ("xdog", "canny", "dog", "hed", "anime")

class StyleError(ImageError):
    """A sketch style cannot be used (unknown name, missing or unfitting weights); the message names the param and the fix."""


# --------------------------------------------------------------------------------------------
# Built-in weight-free styles
# --------------------------------------------------------------------------------------------


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
    check_rgb(image)
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

    check_rgb(image)
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
    check_rgb(image)
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
    check_rgb(image)
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
