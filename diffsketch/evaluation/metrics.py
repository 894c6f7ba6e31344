"""Image metrics for sketches: SSIM, PSNR, LPIPS and two edge metrics over line pixels.

All functions take sketches as (H, W) float arrays in [0, 1] (1 = paper, 0 = ink), ground truth
first. SSIM and PSNR come from scikit-image, LPIPS from the ``lpips`` package, and the edge
metrics from SciPy's exact Euclidean distance transform.

- ``ssim``: Wang et al. (2004) settings: an 11x11 Gaussian window (sigma 1.5), population
  covariances, data range 1, so C1 = 0.01^2 and C2 = 0.03^2.
- ``psnr``: 10 log10(1 / MSE) in dB, capped at :data:`PSNR_CAP` for identical images (JSON
  cannot hold infinity).
- ``chamfer``: the symmetric mean distance in pixels between the two sets of line pixels (the
  mean, over each set, of the distance to the nearest pixel of the other, averaged over both
  directions). 0 when neither has lines; the image diagonal when only one has.
- ``f_score``: the harmonic mean of precision (the share of predicted line pixels within the
  tolerance of a ground-truth line pixel) and recall (the share of ground-truth line pixels
  within the tolerance of a predicted one). A relaxed, many-to-one version of the BSDS boundary
  F-measure (which matches pixels one to one); 1 when neither has lines, 0 when only one has.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

PSNR_CAP = 100.0  # dB, for identical images
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "lpips": False, "chamfer": False, "f_score": True}
UNITS = {"psnr": "dB", "chamfer": "px"}


def _check_pair(truth: np.ndarray, pred: np.ndarray) -> None:
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(f"expected two (H, W) sketches of one size, got {truth.shape} and {pred.shape}")


def ssim(truth: np.ndarray, pred: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004 settings); images need at least 11 px per side."""
    from skimage.metrics import structural_similarity

    _check_pair(truth, pred)
    return float(
        structural_similarity(
            truth.astype(np.float64), pred.astype(np.float64), data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
    )  # fmt: skip


def psnr(truth: np.ndarray, pred: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for data range 1, at most :data:`PSNR_CAP`."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_pair(truth, pred)
    truth, pred = truth.astype(np.float64), pred.astype(np.float64)
    if np.array_equal(truth, pred):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(truth, pred, data_range=1.0)))


def line_mask(sketch: np.ndarray, threshold: float | str = 0.5) -> np.ndarray:
    """Line (ink) pixels: values below ``threshold``, or below the image's Otsu threshold for ``"otsu"``."""
    if threshold == "otsu":
        from skimage.filters import threshold_otsu

        if sketch.min() == sketch.max():  # one value only: ink if dark
            return np.full(sketch.shape, sketch.flat[0] < 0.5)
        # threshold_otsu returns the centre of the dark class's last histogram bin (256 bins);
        # every value in that bin belongs to the dark class.
        half_bin = 0.5 * (float(sketch.max()) - float(sketch.min())) / 256
        return sketch <= float(threshold_otsu(sketch, nbins=256)) + half_bin
    return sketch < float(threshold)


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Distance (px) from every pixel to the nearest True pixel of ``mask``."""
    return distance_transform_edt(~mask)


def chamfer(truth_lines: np.ndarray, pred_lines: np.ndarray) -> float:
    """Symmetric mean nearest-line distance in pixels between two boolean line masks."""
    _check_pair(truth_lines, pred_lines)
    if not truth_lines.any() and not pred_lines.any():
        return 0.0
    if not truth_lines.any() or not pred_lines.any():
        return float(math.hypot(*truth_lines.shape))
    to_truth, to_pred = _distance_to(truth_lines), _distance_to(pred_lines)
    return 0.5 * (float(to_truth[pred_lines].mean()) + float(to_pred[truth_lines].mean()))


def f_score(truth_lines: np.ndarray, pred_lines: np.ndarray, tolerance: float) -> float:
    """F-measure of line pixels matched within ``tolerance`` pixels (see the module docstring)."""
    _check_pair(truth_lines, pred_lines)
    if not truth_lines.any() and not pred_lines.any():
        return 1.0
    if not truth_lines.any() or not pred_lines.any():
        return 0.0
    precision = float((_distance_to(truth_lines)[pred_lines] <= tolerance).mean())
    recall = float((_distance_to(pred_lines)[truth_lines] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def lpips_distance(net: torch.nn.Module, truth: np.ndarray, pred: np.ndarray) -> float:
    """LPIPS between two sketches: grey repeated to 3 channels, scaled to [-1, 1]."""
    _check_pair(truth, pred)
    device = next(net.parameters()).device
    a, b = (torch.from_numpy(x.astype(np.float32))[None, None].expand(1, 3, -1, -1).to(device) * 2 - 1 for x in (truth, pred))
    with torch.inference_mode():
        return float(net(a, b).mean())


def score(
    truth: np.ndarray, pred: np.ndarray, *, threshold: float | str = 0.5, tolerance: float = 0.0075, lpips_net=None
) -> dict[str, float]:
    """Every metric of one (ground truth, prediction) pair; ``tolerance`` is a fraction of the diagonal."""
    truth_lines, pred_lines = line_mask(truth, threshold), line_mask(pred, threshold)
    out = dict(
        ssim=ssim(truth, pred),
        psnr=psnr(truth, pred),
        chamfer=chamfer(truth_lines, pred_lines),
        f_score=f_score(truth_lines, pred_lines, tolerance * math.hypot(*truth.shape)),
    )
    if lpips_net is not None:
        out["lpips"] = lpips_distance(lpips_net, truth, pred)
    return out
