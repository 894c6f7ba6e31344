"""The streamed randomized PCA against scikit-learn's exact PCA of the whole matrix.

The oracle builds the full matrix in memory, weights it by hand (numpy, from the definition:
each layer centred and divided by the square root of its total variance) and runs
``sklearn.decomposition.PCA`` (full SVD). The code under test never forms that matrix.
"""

import logging

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from conftest import small_params
from diffsketch.analysis import timesteps as analysis
from diffsketch.analysis.timesteps import AnalysisInputError, FeatureReader, analyze
from diffsketch.core.params import AnalyzeConfig
from diffsketch.analysis.pca import randomized_pca
from test_analysis import synthetic_store

STEPS, WIDTHS = 20, (30, 90, 12)


def decaying_items(items: int = 15, seed: int = 0) -> list[list[np.ndarray]]:
    """Blocks with a realistic spectrum: a drift along the trajectory, a few strong directions,
    then a geometric tail, and layers of very different scales and means (float16, as stored)."""
    rng = np.random.default_rng(seed)
    dim = sum(WIDTHS)
    basis = np.linalg.qr(rng.normal(size=(dim, 40)))[0]
    strength = 30.0 * 0.8 ** np.arange(40)
    drift = np.linspace(-1, 1, STEPS)[:, None] * rng.normal(size=(1, dim)) * 4
    offsets = rng.normal(size=dim) * 5
    scales = np.concatenate([np.full(w, s) for w, s in zip(WIDTHS, (1.0, 20.0, 0.1))])
    out = []
    for _ in range(items):
        x = drift + (rng.normal(size=(STEPS, 40)) * strength) @ basis.T + 0.05 * rng.normal(size=(STEPS, dim))
        x = ((x + offsets) * scales).astype(np.float16)
        out.append(np.split(x, np.cumsum(WIDTHS)[:-1], axis=1))
    return out


def weighted_by_hand(blocks_per_item: list[list[np.ndarray]], equal: bool) -> np.ndarray:
    layers = [np.concatenate([b[l] for b in blocks_per_item]).astype(np.float64) for l in range(len(WIDTHS))]
    out = []
    for x in layers:
        x = x - x.mean(axis=0)
        out.append(x / np.sqrt(x.var(axis=0).sum()) if equal else x)
    return np.concatenate(out, axis=1)


def aligned(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """``estimate``'s columns with the sign that matches ``reference`` (PCA signs are arbitrary)."""
    return estimate * np.sign((reference * estimate).sum(axis=0))


@pytest.mark.parametrize("equal", [True, False], ids=["equal", "raw"])
def test_matches_the_exact_pca_within_one_percent(equal):
    data = decaying_items()
    matrix = weighted_by_hand(data, equal)
    exact = PCA(8, svd_solver="full").fit(matrix)
    reads = []
    fit = randomized_pca(lambda i: reads.append(i) or data[i], range(len(data)), STEPS, WIDTHS, 8, equal_weights=equal)
    np.testing.assert_allclose(fit.explained_variance, exact.explained_variance_, rtol=0.01)
    np.testing.assert_allclose(fit.explained_variance_ratio, exact.explained_variance_ratio_, rtol=0.01)
    angles = np.degrees(subspace_angles(fit.components.T.astype(np.float64), exact.components_.T))
    assert angles.max() < 1.0, f"largest principal angle {angles.max():.3f} degrees"
    reference = exact.transform(matrix)
    scale = np.abs(reference).max()
    assert np.abs(aligned(reference, fit.projection) - reference).max() < 0.01 * scale
    # every trajectory's chunks read once per pass: one pass for the first block (and the statistics), one per iteration
    assert fit.passes == 3 and sorted(reads) == sorted(list(range(len(data))) * 3)


def test_sketch_that_covers_the_range_is_exact():
    """Data of rank 12 (float32, with offsets and layer scales) and 12 + 10 random directions: the
    first block already spans the data, so the result equals the exact PCA up to rounding."""
    rng = np.random.default_rng(4)
    dim = sum(WIDTHS)
    rank = rng.normal(size=(12, dim)) * np.concatenate([np.full(w, s) for w, s in zip(WIDTHS, (1.0, 20.0, 0.1))])
    data = [np.split(rng.normal(size=(STEPS, 12)) @ rank + 7.0, np.cumsum(WIDTHS)[:-1], axis=1) for _ in range(4)]
    data = [[b.astype(np.float32) for b in item] for item in data]
    matrix = weighted_by_hand(data, True)
    exact = PCA(5, svd_solver="full").fit(matrix)
    for q in (0, 1):
        fit = randomized_pca(lambda i: data[i], range(4), STEPS, WIDTHS, 5, equal_weights=True, power_iterations=q)
        np.testing.assert_allclose(fit.explained_variance, exact.explained_variance_, rtol=1e-5)
        reference = exact.transform(matrix)
        np.testing.assert_allclose(aligned(reference, fit.projection), reference, atol=1e-4 * np.abs(reference).max())


def test_seeded_and_deterministic():
    data = decaying_items(items=5)
    run = lambda seed: randomized_pca(lambda i: data[i], range(5), STEPS, WIDTHS, 4, equal_weights=True, seed=seed)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a.projection, b.projection) and np.array_equal(a.explained_variance, b.explained_variance)
    assert not np.array_equal(a.projection, c.projection)  # another sketch ...
    np.testing.assert_allclose(a.explained_variance, c.explained_variance, rtol=0.01)  # ... the same components


def test_more_power_iterations_are_more_accurate():
    """With little oversampling, each Krylov iteration brings the estimate closer to the exact one."""
    data = decaying_items(items=10)
    exact = PCA(8, svd_solver="full").fit(weighted_by_hand(data, True)).explained_variance_
    errors = []
    for q in (0, 1, 2):
        fit = randomized_pca(lambda i: data[i], range(10), STEPS, WIDTHS, 8, equal_weights=True, oversamples=2, power_iterations=q)
        errors.append(np.abs(fit.explained_variance / exact - 1).max())
    assert errors[0] > errors[1] > errors[2]


def exact_projection(reader: FeatureReader, trajectories, cfg: AnalyzeConfig, progress=False):
    """The oracle route for `analyze`: the whole weighted matrix in memory, sklearn's full PCA."""
    blocks = [[b.astype(np.float64) for b in reader.blocks(i)] for i in trajectories]
    layers = [np.concatenate([b[l] for b in blocks]) for l in range(len(reader.layers))]
    weighted = []
    for x in layers:
        x = x - x.mean(axis=0)
        weighted.append(x / np.sqrt(x.var(axis=0).sum()) if cfg.layer_weighting == "equal" else x)
    pca = PCA(cfg.pca_dims, svd_solver="full")
    return pca.fit_transform(np.concatenate(weighted, axis=1)).astype(np.float32), pca.explained_variance_ratio_


def analyze_both_ways(path, monkeypatch, **kw):
    cfg = AnalyzeConfig(**{**dict(pca_dims=5, k_min=2, k_max=8, k="auto", seed=0), **kw})
    fast = analyze(path, cfg, progress=False)
    with monkeypatch.context() as m:
        m.setattr(analysis, "_incremental_pca", exact_projection)
        exact = analyze(path, cfg.model_copy(update=dict(pca="incremental")), progress=False)
    return fast, exact


@pytest.mark.parametrize("noise", [0.05, 0.8])
def test_same_timesteps_as_the_exact_pca_on_the_four_group_store(tmp_path, monkeypatch, noise):
    path = synthetic_store(tmp_path / "s.zarr", noise=noise)
    fast, exact = analyze_both_ways(path, monkeypatch)
    assert fast.k == exact.k and fast.selected.tolist() == exact.selected.tolist()
    np.testing.assert_allclose(fast.explained_variance_ratio, exact.explained_variance_ratio, rtol=0.01)
    assert fast.meta["pca"] == "randomized" and exact.meta["pca"] == "incremental"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny):
    """A store from the real sampling path: the tiny model, 4 trajectories of 10 steps at 128 px, pool 2."""
    from diffsketch.store.collect import run_sample

    folder = tmp_path_factory.mktemp("sampled")
    prompts = folder / "prompts"
    prompts.mkdir()
    (prompts / "animals.txt").write_text("a photo of a horse in mud\na cat on a sofa\n")
    (prompts / "food.txt").write_text("a bowl of ramen\na slice of pizza\n")
    params = small_params(prompts, trajectories=4, steps=10, resolution=128, pool=2, batch_size=4)
    return run_sample(params, folder / "f.zarr", progress=False, model=tiny)


def test_same_timesteps_as_the_exact_pca_on_a_sampled_store(tiny_store, monkeypatch):
    """A store written by the real sampling path (tiny model): the same chosen timesteps, and the
    explained variance of each component within 1% of the exact PCA's."""
    for weighting in ("equal", "raw"):
        fast, exact = analyze_both_ways(tiny_store, monkeypatch, k=4, k_max=6, layer_weighting=weighting)
        assert fast.selected.tolist() == exact.selected.tolist(), weighting
        np.testing.assert_allclose(fast.explained_variance_ratio, exact.explained_variance_ratio, rtol=0.01)


def test_incremental_path_is_kept(tmp_path):
    """`pca: incremental` still runs scikit-learn's IncrementalPCA and finds the four groups."""
    path = synthetic_store(tmp_path / "s.zarr")
    result = analyze(path, AnalyzeConfig(pca_dims=5, k_min=2, k_max=8, k="auto", pca="incremental"), progress=False)
    assert result.k == 4 and result.meta["pca"] == "incremental"


def test_progress_projects_the_total(caplog):
    data = decaying_items(items=8)
    with caplog.at_level(logging.INFO, logger="diffsketch.analysis.pca"):
        randomized_pca(lambda i: data[i], range(8), STEPS, WIDTHS, 4, equal_weights=True, progress=True)
    assert "3 passes over 8 trajectories" in caplog.text and "projected total" in caplog.text


def test_cuda_without_a_gpu_is_refused_before_reading(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = synthetic_store(tmp_path / "s.zarr")
    monkeypatch.setattr(FeatureReader, "blocks", lambda *a: pytest.fail("read the store"))
    with pytest.raises(AnalysisInputError, match="analyze.device=cuda was asked for but no CUDA GPU"):
        analyze(path, AnalyzeConfig(pca_dims=5, k_max=8, device="cuda"), progress=False)
