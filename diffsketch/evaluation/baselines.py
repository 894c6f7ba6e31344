"""Baseline sketch extractors the student is compared against in the `evaluate` stage.

Every method maps a (3, H, W) RGB image in [0, 1] to a (1, H, W) sketch in [0, 1] with the
project's convention (1 = white paper, 0 = black ink), so all of them and the ground truth are
scored alike. Weight-free ones (``peers.md`` section 2):

- ``canny``, ``dog``, ``xdog``: the built-in styles of :mod:`diffsketch.training.styles` (``xdog`` is the
  DiffSketch authors' variant);
- ``sobel``: the Sobel gradient magnitude of the luma image, scaled so the strongest edge is black;
- ``xdog_cemal``: the widely copied XDoG (:func:`xdog_common`; sigma 0.8, k 1.6, gamma 0.98,
  epsilon -0.1, phi 200);
- ``xdog_anime``: the anime line-art parameters in the same form (sigma 0.3, k 4.5, gamma 0.95,
  epsilon -0.1, phi 1e9: a hard step);
- ``lineart``: controlnet_aux's weight-free ``lineart_standard`` (blur minus image, normalised by
  the median line strength), inverted to dark lines on white.

``hed`` and ``anime`` are learned baselines; they need the user's weights file
(``evaluate.weights``). The student is added by :mod:`diffsketch.evaluation.protocol`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from diffsketch.training import styles

SketchFn = Callable[[torch.Tensor], torch.Tensor]


def xdog_common(image: torch.Tensor, sigma: float, k: float, gamma: float, epsilon: float, phi: float) -> torch.Tensor:
    """The XDoG form most code copies (CemalUnal's XDoG-Filter, also used by CLIPasso), on luma in [0, 1].

    ``D = G_sigma - gamma G_{k sigma}``; the value is 1 where ``D < epsilon`` and ``1 + tanh(phi D)``
    elsewhere, then stretched to [0, 1] (min to 0, max to 1). With epsilon -0.1, bright flat areas
    (``D`` slightly positive) become white, the dark side of each edge (``-0.1 <= D < 0``) black,
    and the rare strongly negative ``D`` mid-grey.
    """
    grey = styles._luma(image)
    d = gaussian_filter(grey, sigma, mode="mirror") - gamma * gaussian_filter(grey, sigma * k, mode="mirror")
    out = np.where(d < epsilon, 1.0, 1.0 + np.tanh(phi * d))
    low, high = out.min(), out.max()
    out = (out - low) / (high - low) if high > low else np.ones_like(out)
    return styles._as_sketch(out, image)


def sobel(image: torch.Tensor) -> torch.Tensor:
    """1 - |Sobel gradient| of the luma image, divided by its maximum (a flat image stays white)."""
    from skimage.filters import sobel as skimage_sobel

    magnitude = skimage_sobel(styles._luma(image))
    peak = magnitude.max()
    return styles._as_sketch(1.0 - (magnitude / peak if peak > 0 else magnitude), image)


def lineart(image: torch.Tensor, sigma: float = 6.0) -> torch.Tensor:
    """controlnet_aux's ``lineart_standard``, as dark lines on white.

    On the 0-255 image: ``g = blur(x, sigma)``, line strength = the minimum over channels of
    ``g - x`` clipped to [0, 255], divided by ``max(16, median of the strengths above 8)``, times
    127, clipped to [0, 255]. The sketch is ``1 - strength / 255``.
    """
    x = image.detach().float().clamp(0, 1).cpu().numpy().astype(np.float64) * 255.0
    g = np.stack([gaussian_filter(c, sigma, mode="mirror") for c in x])
    strength = np.clip((g - x).min(axis=0), 0.0, 255.0)
    strong = strength[strength > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    strength = np.clip(strength / scale * 127.0, 0.0, 255.0)
    return styles._as_sketch(1.0 - strength / 255.0, image)


WEIGHT_FREE: dict[str, SketchFn] = {
    "canny": styles.canny,
    "dog": styles.dog,
    "xdog": styles.xdog,
    "sobel": sobel,
    "xdog_cemal": lambda image: xdog_common(image, sigma=0.8, k=1.6, gamma=0.98, epsilon=-0.1, phi=200.0),
    "xdog_anime": lambda image: xdog_common(image, sigma=0.3, k=4.5, gamma=0.95, epsilon=-0.1, phi=1e9),
    "lineart": lineart,
}
LEARNED = ("hed", "anime")


def baseline(name: str, weights: dict[str, str] | None = None) -> SketchFn:
    """The sketch function of baseline ``name`` (a weight-free one, or ``hed`` / ``anime`` with weights).

    Raises:
        KeyError: an unknown name (the config schema only lets known names through).
    """
    if name in WEIGHT_FREE:
        return WEIGHT_FREE[name]
    if name in LEARNED:
        path = (weights or {}).get(name)
        return lambda image: styles.apply_style(name, image, path, param=f"evaluate.weights.{name}")
    raise KeyError(name)
