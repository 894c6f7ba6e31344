"""Each metric against a value computed by hand on a tiny image pair."""

import math

import numpy as np
import pytest

from diffsketch.evaluation import metrics


def _gaussian_window(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def test_ssim_matches_the_wang_formula_on_one_window():
    # An 11 x 11 pair holds exactly one full 11 x 11 Gaussian window (sigma 1.5), so SSIM is the
    # formula of Wang et al. (2004) at the centre pixel: weighted means, population (co)variances.
    rng = np.random.default_rng(0)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    w = _gaussian_window()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert metrics.ssim(x, y) == pytest.approx(expected, abs=1e-9)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    a, b = np.full((16, 16), 0.2), np.full((16, 16), 0.6)
    c1 = 0.01**2  # data range 1
    assert metrics.ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), abs=1e-6)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_psnr_by_hand_and_capped_for_identical_images():
    truth = np.zeros((4, 4))
    pred = truth.copy()
    pred[1, 2] = 0.5  # MSE = 0.25 / 16 = 1 / 64
    assert metrics.psnr(truth, pred) == pytest.approx(10 * math.log10(64))
    assert metrics.psnr(truth, truth) == metrics.PSNR_CAP


def test_chamfer_and_f_score_by_hand():
    truth = np.zeros((8, 8), bool)
    pred = np.zeros((8, 8), bool)
    truth[1, 1] = True
    pred[4, 5] = True  # 3-4-5 triangle
    assert metrics.chamfer(truth, pred) == pytest.approx(5.0)
    assert metrics.f_score(truth, pred, tolerance=4.9) == 0.0
    assert metrics.f_score(truth, pred, tolerance=5.0) == 1.0

    truth[1, 6] = True
    pred[:] = False
    pred[1, 2] = True
    # pred -> truth: 1 px; truth -> pred: (1 + 4) / 2 = 2.5 px; chamfer = (1 + 2.5) / 2
    assert metrics.chamfer(truth, pred) == pytest.approx(1.75)
    # tolerance 2: precision 1/1, recall 1/2 -> F = 2 * 1 * 0.5 / 1.5
    assert metrics.f_score(truth, pred, tolerance=2.0) == pytest.approx(2 / 3)


def test_edge_metrics_without_lines():
    empty = np.zeros((6, 8), bool)
    some = empty.copy()
    some[2, 3] = True
    assert metrics.chamfer(empty, empty) == 0.0 and metrics.f_score(empty, empty, 1.0) == 1.0
    assert metrics.chamfer(empty, some) == pytest.approx(10.0)  # the diagonal of 6 x 8
    assert metrics.f_score(some, empty, 1.0) == 0.0


def test_line_mask_threshold_and_otsu():
    sketch = np.array([[0.1, 0.45, 0.55, 0.9]])
    assert metrics.line_mask(sketch, 0.5).tolist() == [[True, True, False, False]]
    bimodal = np.array([[0.3, 0.32, 0.31, 0.8, 0.82, 0.81]])
    assert metrics.line_mask(bimodal, "otsu").tolist() == [[True, True, True, False, False, False]]
    assert not metrics.line_mask(np.ones((3, 3)), "otsu").any()


def test_score_uses_tolerance_relative_to_the_diagonal():
    truth = np.ones((30, 40))
    pred = np.ones((30, 40))
    truth[10, 10] = 0
    pred[10, 13] = 0  # 3 px apart; the diagonal is 50 px
    assert metrics.score(truth, pred, tolerance=0.06)["f_score"] == 1.0  # 3 px allowed
    assert metrics.score(truth, pred, tolerance=0.05)["f_score"] == 0.0  # 2.5 px allowed
    out = metrics.score(truth, pred)
    assert set(out) == {"ssim", "psnr", "chamfer", "f_score"} and out["chamfer"] == pytest.approx(3.0)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one size"):
        metrics.ssim(np.ones((12, 12)), np.ones((12, 13)))
