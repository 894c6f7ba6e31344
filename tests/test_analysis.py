import json
from itertools import combinations

import numpy as np
import pytest

from diffsketch.store import zarr_store as store
from diffsketch.analysis.timesteps import (
    SELECTIONS,
    AnalysisInputError,
    AnalysisResult,
    analyze,
    knee,
    select_timesteps,
    selection_distance,
    selection_distances,
    uniform_timesteps,
    write_outputs,
)
from diffsketch.core.params import AnalyzeConfig
from diffsketch.diffusion.features import LayerSpec

TIMESTEPS = [951, 901, 851, 801, 751, 701, 651, 601, 551, 501, 451, 401, 351, 301, 251, 201, 151, 101, 51, 1]
GROUPS = np.repeat(np.arange(4), 5)  # timesteps form 4 blocks of 5 along the trajectory


def synthetic_store(path, trajectories=12, complete=None, group_of_step=GROUPS, model="tiny", noise=0.05, seed=0):
    """A store whose UNet features cluster by timestep group; two layers with very different scales."""
    rng = np.random.default_rng(seed)
    specs = [LayerSpec("up0_res0", "m", 8, 2), LayerSpec("up3_res0", "m", 4, 4)]
    layout = store.StoreLayout(trajectories, TIMESTEPS, ["uncond", "cond"], specs, [], 2, 64, (4, 8, 8))
    attrs = dict(fingerprint="synthetic", model=model, classes=["a", "b"], unet_layers=[vars(s) for s in specs])
    root = store.create(path, layout, attrs)
    root["labels"][:] = np.arange(trajectories) % 2
    centres = {name: rng.normal(size=(4, 2 if name == "up0_res0" else 4, spec.channels, 2, 2)) for name, spec in
               [(s.name, s) for s in specs]}  # fmt: skip
    scale = {"up0_res0": 1.0, "up3_res0": 100.0}
    for i in range(trajectories):
        if complete is not None and not complete[i]:
            continue
        unet = {}
        for s in specs:
            c = centres[s.name][group_of_step]  # (T, halves, C, 2, 2)
            x = c + noise * rng.normal(size=c.shape)
            unet[s.name] = (scale[s.name] * x).astype(np.float16)
        store.write_trajectory(root, i, unet, {}, np.zeros((64, 64, 3), np.uint8), np.zeros((4, 8, 8)), np.zeros((4, 8, 8)))
    return path


def assert_distinct(result):
    """Every chosen timestep is a different one (k clusters, k timesteps)."""
    assert len(set(result.selected.tolist())) == len(result.selected)


def cfg(**kw):
    base = dict(pca_dims=5, k_min=2, k_max=8, k="auto", strategy="kmeans", seed=0)
    base.update(kw)
    return AnalyzeConfig(**base)


def test_auto_finds_the_four_groups_and_one_timestep_each(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr")
    result = analyze(path, cfg(), progress=False)
    assert_distinct(result)
    assert result.k == 4
    chosen_groups = sorted(GROUPS[result.selected])
    assert chosen_groups == [0, 1, 2, 3]
    assert list(np.asarray(TIMESTEPS)[result.selected]) == sorted(np.asarray(TIMESTEPS)[result.selected])
    assert result.cluster_sizes.sum() == 12 * 20 and set(result.cluster_sizes) == {12 * 5}
    assert result.silhouette[list(result.k_values).index(4)] == result.silhouette.max()
    info = result.timesteps_json()
    assert info["timesteps"] == [TIMESTEPS[i] for i in result.selected] and info["ddim_indices"] == list(result.selected)


def test_same_seed_same_timesteps(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr", noise=0.8)
    a = analyze(path, cfg(k=6), progress=False)
    b = analyze(path, cfg(k=6), progress=False)
    assert np.array_equal(a.selected, b.selected) and np.array_equal(a.silhouette, b.silhouette)
    assert a.selected.size == 6
    assert_distinct(a)


def test_fixed_k_and_baseline_strategies(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr")
    six = analyze(path, cfg(k=6), progress=False)  # more clusters than groups: two clusters share a group
    assert six.selected.size == 6
    assert_distinct(six)
    uniform = analyze(path, cfg(k=5, strategy="uniform"), progress=False)
    assert sorted(uniform.selected.tolist()) == [0, 5, 10, 14, 19]
    rnd = analyze(path, cfg(k=5, strategy="random"), progress=False)
    assert len(set(rnd.selected.tolist())) == 5
    fixed = analyze(path, cfg(strategy="fixed", fixed=[1, 501, 951]), progress=False)
    assert [TIMESTEPS[i] for i in fixed.selected] == [1, 501, 951]


def test_equal_weighting_lets_the_small_layer_count(tmp_path):
    """The large-scale layer carries only noise; the small one carries the groups. Only `equal` sees them."""
    rng = np.random.default_rng(1)
    path = synthetic_store(tmp_path / "s.zarr", noise=0.02)
    root = store.open_store(path, mode="r+")
    big = root["unet/up3_res0"]
    big[:] = (300 * rng.normal(size=big.shape)).astype(np.float16)
    equal = analyze(path, cfg(layer_weighting="equal"), progress=False)
    raw = analyze(path, cfg(layer_weighting="raw"), progress=False)
    assert equal.k == 4 and sorted(GROUPS[equal.selected]) == [0, 1, 2, 3]
    assert_distinct(equal)
    assert_distinct(raw)
    assert raw.silhouette.max() < equal.silhouette.max()


def test_incomplete_trajectories_are_skipped(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr", complete=[True, False] * 6)
    result = analyze(path, cfg(), progress=False)
    assert set(result.row_trajectory.tolist()) == {0, 2, 4, 6, 8, 10}


@pytest.mark.parametrize(
    "setup, config, message",
    [
        (dict(complete=[False] * 12), cfg(), "no complete trajectories"),
        ({}, cfg(k_max=20), "k_max=20 must be below the number of timesteps"),
        ({}, cfg(pca_dims=200), "pca_dims=200 is larger than the data allows"),
        ({}, cfg(strategy="fixed", fixed=[2]), "not in it: [2]"),
    ],
)
def test_bad_input_is_refused_before_work(tmp_path, setup, config, message):
    path = synthetic_store(tmp_path / "s.zarr", **setup)
    with pytest.raises(AnalysisInputError) as err:
        analyze(path, config, progress=False)
    assert message in str(err.value)


def test_store_from_another_model(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr", model="other/model")
    with pytest.raises(AnalysisInputError, match="sampled with model 'other/model'"):
        analyze(path, cfg(), model_id="tiny", progress=False)


def test_outputs_round_trip(tmp_path):
    result = analyze(synthetic_store(tmp_path / "s.zarr"), cfg(), progress=False)
    write_outputs(result, tmp_path / "res", tmp_path / "timesteps.json", tmp_path / "plots")
    info = json.loads((tmp_path / "timesteps.json").read_text())
    assert info["k"] == 4 and len(info["timesteps"]) == 4 and info["model"] == "tiny"
    metrics = json.loads((tmp_path / "plots" / "metrics.json").read_text())
    assert metrics["k"] == 4 and 0 < metrics["explained_variance"] <= 1 and metrics["silhouette"] > 0.5
    elbow = json.loads((tmp_path / "plots" / "elbow.json").read_text())
    assert [row["k"] for row in elbow] == list(range(2, 9))
    loaded = AnalysisResult.load(tmp_path / "res")
    assert loaded.k == 4 and np.array_equal(loaded.selected, result.selected) and loaded.meta == result.meta


def test_knee():
    k = np.arange(2, 10)
    inertia = np.array([100, 60, 30, 10, 9, 8, 7, 6], dtype=float)
    assert knee(k, inertia) == 5


def test_selection_is_the_optimal_assignment_not_the_greedy_one():
    """Two centres near the same timestep: each centre's own best timestep is step 1 (a greedy or
    nearest-point choice picks it twice); the distinct assignment of least total cost is worked out
    by hand below."""
    # one trajectory, three steps, 1-D projections at 0, 1 and 2; centres at 0.8 and 1.1
    projection = np.array([[0.0], [1.0], [2.0]])
    row_step = np.array([0, 1, 2])
    centers = np.array([[0.8], [1.1]])
    # cost[c, t] = |x_t - centre_c|:  c0: 0.8 0.2 1.2   c1: 1.1 0.1 0.9
    # assignments (c0, c1): (0,1) 0.9  (0,2) 1.7  (1,0) 1.3  (1,2) 1.1  (2,0) 2.3  (2,1) 1.3  -> (0, 1)
    chosen, clusters = select_timesteps(projection, row_step, centers, steps=3)
    assert dict(zip(clusters.tolist(), chosen.tolist())) == {0: 0, 1: 1}


def test_selection_cost_is_the_mean_distance_of_a_timesteps_points():
    """One centre at 1.0. Step 0's points (0.5, 1.5) are 0.5 away on average; step 1 has a point on
    the centre but the other at 4.0, 1.5 away on average. The mean picks step 0 (the nearest single
    point would pick step 1)."""
    projection = np.array([[0.5], [1.0], [1.5], [4.0]])  # two trajectories of two steps
    row_step = np.array([0, 1, 0, 1])
    chosen, clusters = select_timesteps(projection, row_step, np.array([[1.0]]), steps=2)
    assert chosen.tolist() == [0] and clusters.tolist() == [0]


def test_selection_with_as_many_clusters_as_timesteps_uses_each_once():
    """k = T: the assignment is a permutation; with every centre on one step's points, it is that step."""
    rng = np.random.default_rng(0)
    steps = 6
    centres = rng.normal(size=(steps, 3)) * 10
    order = rng.permutation(steps)  # centre c sits on step order[c]
    row_step = np.tile(np.arange(steps), 4)
    projection = centres[np.argsort(order)][row_step] + 0.01 * rng.normal(size=(len(row_step), 3))
    chosen, clusters = select_timesteps(projection, row_step, centres, steps)
    assert sorted(chosen.tolist()) == list(range(steps))
    assert dict(zip(clusters.tolist(), chosen.tolist())) == dict(enumerate(order.tolist()))


def test_previews_keep_each_trajectorys_prompt_and_final_image(tmp_path):
    """The report's hover cards: the prompt and a 64 px thumbnail of the final image, per trajectory, saved and loaded."""
    from diffsketch.analysis.timesteps import THUMBNAIL

    path = synthetic_store(tmp_path / "s.zarr", trajectories=6)
    with store.writing():  # as the sample stage writes: all-zero chunks too (an absent chunk file is damage)
        root = store.open_group(path, mode="r+")
        root.attrs["prompts"] = ["a horse", "a cat", "ramen"]
        root["prompt_ids"][:] = [2, 1, 0, 2, 1, 0]
        for i in range(6):
            root["images"][i] = np.full((64, 64, 3), 40 * i, np.uint8)
    result = analyze(path, cfg(k=4, k_max=5), progress=False)
    assert result.trajectory_ids.tolist() == list(range(6))
    assert result.prompts.tolist() == ["ramen", "a cat", "a horse", "ramen", "a cat", "a horse"]
    assert result.thumbnails.shape == (6, THUMBNAIL, THUMBNAIL, 3)
    assert [int(t.mean()) for t in result.thumbnails] == [40 * i for i in range(6)]
    result.save(tmp_path / "res")
    loaded = AnalysisResult.load(tmp_path / "res")
    assert loaded.prompts.tolist() == result.prompts.tolist()
    np.testing.assert_array_equal(loaded.thumbnails, result.thumbnails)


# --- selection distance -------------------------------------------------------------------------

# Two trajectories of 4 timesteps on lines: A at 0, 1, 2, 3 on the x axis; B at 0, 5, 10, 15 along (0.6, 0.8),
# i.e. (0, 0), (3, 4), (6, 8), (9, 12): every distance in B is 5 times the one in A.
LINE = np.array([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], [[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [9.0, 12.0]]])


def brute_selection_distance(features, selected):
    """Independent oracle: explicit loops over trajectories, timesteps and selected timesteps."""
    total, count = 0.0, 0
    for trajectory in features:
        for point in trajectory:
            total += min(float(np.sqrt(((point - trajectory[s]) ** 2).sum())) for s in selected)
            count += 1
    return total / count


def test_selection_distance_by_hand():
    # {1}: A is 1, 0, 1, 2 away (4), B 5, 0, 5, 10 (20): 24 / 8 points
    assert selection_distance(LINE, [1]) == pytest.approx(3.0)
    # {0, 3}: A 0, 1, 1, 0 (2), B 0, 5, 5, 0 (10): 12 / 8
    assert selection_distance(LINE, [0, 3]) == pytest.approx(1.5)
    # {0}: A 0, 1, 2, 3 (6), B 0, 5, 10, 15 (30): 36 / 8
    assert selection_distance(LINE, [0]) == pytest.approx(4.5)
    assert selection_distance(LINE, [0, 1, 2, 3]) == 0.0


def test_selection_distances_by_hand():
    """k = 2 of 4 steps. Per pair, A's total is (0,1) 3, (0,2) 2, (0,3) 2, (1,2) 2, (1,3) 2, (2,3) 3 and B's five
    times it, so one pair's distance is 6 * A / 8: 2.25, 1.5, 1.5, 1.5, 1.5, 2.25. Their mean is 1.75 and their
    standard deviation sqrt((2 * 0.5**2 + 4 * 0.25**2) / 6) = sqrt(0.125)."""
    d = selection_distances(LINE, [0, 2])  # representative {0, 2}: A 0, 1, 0, 1 -> 1.5
    assert list(d) == list(SELECTIONS)
    assert d["representative"] == pytest.approx(1.5)
    assert d["uniform"] == pytest.approx(1.5)  # {0, 3}
    assert d["random"] == pytest.approx(1.75)
    assert d["random_std"] == pytest.approx(np.sqrt(0.125))
    worse = selection_distances(LINE, [0, 1])  # representative {0, 1}: 2.25
    assert worse["representative"] == pytest.approx(2.25) and worse["uniform"] == pytest.approx(1.5)


def test_uniform_timesteps_by_hand():
    # 19 / 4 = 4.75: 0, 4.75, 9.5, 14.25, 19 -> 0, 5, 10 (half to even), 14, 19
    assert uniform_timesteps(20, 5).tolist() == [0, 5, 10, 14, 19]
    assert uniform_timesteps(4, 2).tolist() == [0, 3]
    assert uniform_timesteps(10, 1).tolist() == [0]
    assert uniform_timesteps(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert uniform_timesteps(50, 13).tolist() == [round(i * 49 / 12) for i in range(13)]  # no .5 case here
    # the uniform selection distance is the one of these timesteps
    x = np.random.default_rng(3).normal(size=(3, 20, 2))
    assert selection_distances(x, [1, 2, 3, 4, 5])["uniform"] == pytest.approx(brute_selection_distance(x, [0, 5, 10, 14, 19]))


@pytest.mark.parametrize("steps, k", [(5, 2), (6, 3), (4, 1)])
def test_random_is_the_mean_over_every_k_subset_when_there_are_few(steps, k):
    x = np.random.default_rng(steps).normal(size=(3, steps, 3))
    values = [brute_selection_distance(x, s) for s in combinations(range(steps), k)]
    d = selection_distances(x, list(range(k)), draws=200)
    assert d["random"] == pytest.approx(np.mean(values), rel=1e-12)
    assert d["random_std"] == pytest.approx(np.std(values), rel=1e-9)
    assert d["representative"] == pytest.approx(brute_selection_distance(x, list(range(k))))


def test_random_draws_estimate_the_mean_over_every_k_subset():
    """56 subsets of 3 of 8 steps, 40 seeded draws: the mean is near the exact one, the std near the exact std."""
    x = np.random.default_rng(0).normal(size=(4, 8, 2))
    values = np.array([brute_selection_distance(x, s) for s in combinations(range(8), 3)])
    a = selection_distances(x, [0, 1, 2], draws=40, seed=0)
    assert a == selection_distances(x, [0, 1, 2], draws=40, seed=0)  # seeded
    assert a["random"] != selection_distances(x, [0, 1, 2], draws=40, seed=1)["random"]
    assert abs(a["random"] - values.mean()) < 4 * values.std() / np.sqrt(40)
    assert 0.5 * values.std() < a["random_std"] < 1.5 * values.std()


def test_random_draws_are_k_distinct_timesteps():
    """6 equally spaced points (0 .. 5), k = 5 from 5 draws of 6 subsets (so drawn, not enumerated): any 5 distinct
    timesteps leave exactly one point out, 1 away from a neighbour, so every draw is 1 / 6 and the spread 0. A draw
    with a repeated timestep would leave two points out and raise the mean."""
    x = np.arange(6.0).reshape(1, 6, 1)
    d = selection_distances(x, [0, 1, 2, 3, 4], draws=5, seed=0)
    assert d["random"] == pytest.approx(1 / 6) and d["random_std"] == pytest.approx(0.0, abs=1e-12)


def test_selection_distance_rejects_an_empty_selection():
    with pytest.raises(ValueError, match="at least one"):
        selection_distance(LINE, [])
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        selection_distances(LINE, [0, 1, 2, 3, 0])


def test_selection_distance_examples_run():
    import doctest

    import diffsketch.analysis.timesteps as module

    runner = doctest.DocTestRunner()
    for fn in (module.uniform_timesteps, module.selection_distance, module.selection_distances):
        for test in doctest.DocTestFinder().find(fn, fn.__name__, globs=dict(vars(module))):
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5


# Steps 0-1, 2-3 and 4-5 are three short phases and 6-19 one long one: uniform (k = 4: steps 0, 6, 13, 19) puts three
# timesteps in the long phase and misses two short ones; one timestep per cluster covers every phase.
UNEVEN = np.array([0, 0, 1, 1, 2, 2] + [3] * 14)


def test_analyze_records_the_selection_distances(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr", group_of_step=UNEVEN, noise=0.05)
    result = analyze(path, cfg(k=4), progress=False)
    assert sorted(set(UNEVEN[result.selected].tolist())) == [0, 1, 2, 3]
    d = result.selection_distances()
    features = result.projection.reshape(12, 20, -1)
    assert np.array_equal(result.row_step.reshape(12, 20), np.tile(np.arange(20), (12, 1)))  # the reshape's premise
    assert d["representative"] == pytest.approx(brute_selection_distance(features, result.selected), rel=1e-6)
    assert d["uniform"] == pytest.approx(brute_selection_distance(features, [0, 6, 13, 19]), rel=1e-6)
    assert d["representative"] < d["uniform"] and d["representative"] < d["random"] - d["random_std"]
    # the curve: every swept k, the chosen k's row equal to the chosen values
    assert result.selection_k.tolist() == list(range(2, 9))
    by_k = {row["k"]: row for row in result.selection_distance_by_k()}
    assert {name: by_k[4][name] for name in SELECTIONS} == d
    assert by_k[5]["uniform"] == pytest.approx(brute_selection_distance(features, [0, 5, 10, 14, 19]), rel=1e-6)

    write_outputs(result, tmp_path / "res", tmp_path / "timesteps.json", tmp_path / "plots")
    metrics = json.loads((tmp_path / "plots" / "metrics.json").read_text())
    assert metrics["selection_distance"] == pytest.approx(d) and set(metrics["selection_distance"]) == set(SELECTIONS)
    curve = json.loads((tmp_path / "plots" / "selection_distance.json").read_text())
    assert [row["k"] for row in curve] == list(range(2, 9)) and curve[2] == pytest.approx(by_k[4])
    loaded = AnalysisResult.load(tmp_path / "res")
    assert loaded.selection_distances() == d and loaded.selection_distance_by_k() == result.selection_distance_by_k()


def test_single_timestep_selection_distance(tmp_path):
    """k = 1 is outside the sweep: its row is computed on its own, the representative being the chosen timestep."""
    path = synthetic_store(tmp_path / "s.zarr", noise=0.5)
    result = analyze(path, cfg(k=1, k_max=4), progress=False)
    features = result.projection.reshape(12, 20, -1)
    d = result.selection_distances()
    assert d["representative"] == pytest.approx(brute_selection_distance(features, result.selected), rel=1e-6)
    assert d["uniform"] == pytest.approx(brute_selection_distance(features, [0]), rel=1e-6)
    exact = np.mean([brute_selection_distance(features, [t]) for t in range(20)])  # 20 subsets: every one
    assert d["random"] == pytest.approx(exact, rel=1e-6)
    assert 1 not in result.selection_k.tolist()


def test_analysis_saved_without_selection_distances_still_loads(tmp_path):
    result = analyze(synthetic_store(tmp_path / "s.zarr"), cfg(k_max=4), progress=False)
    result.save(tmp_path / "res")
    arrays = dict(np.load(tmp_path / "res" / "analysis.npz"))
    for key in ("selection_distance", "selection_k", "selection_curve"):
        assert key in arrays
        del arrays[key]
    np.savez_compressed(tmp_path / "res" / "analysis.npz", **arrays)  # as an older analysis wrote it
    old = AnalysisResult.load(tmp_path / "res")
    assert old.selection_distances() is None and old.selection_distance_by_k() == []
    assert "selection_distance" not in old.metrics()
    write_outputs(old, tmp_path / "res2", tmp_path / "t.json", tmp_path / "plots")
    assert not (tmp_path / "plots" / "selection_distance.json").exists()


def test_analysis_reads_features_with_their_exponents(tmp_path):
    """A store whose features of one layer were divided by 2**3 with exponent 3 recorded (as `sample`
    stores features beyond float16) analyses as the store holding them as they were."""
    plain, scaled = synthetic_store(tmp_path / "plain.zarr"), synthetic_store(tmp_path / "scaled.zarr")
    root = store.open_group(scaled, mode="r+")
    column = root["unet_exponent"].attrs["layers"].index("up3_res0")
    with store.writing():
        for i in (1, 4, 7):
            x = root["unet/up3_res0"][i].astype(np.float32)
            root["unet/up3_res0"][i] = (x / 8).astype(np.float16)
            exponents = root["unet_exponent"][i]
            exponents[:, column] = 3
            root["unet_exponent"][i] = exponents
    original = store.open_group(plain, mode="r")["unet/up3_res0"][...].astype(np.float32)
    assert not np.allclose(root["unet/up3_res0"][...].astype(np.float32), original, rtol=0.01)  # really stored scaled
    np.testing.assert_allclose(store.read_features(root, "unet", "up3_res0"), original, rtol=1e-3, atol=1e-3)
    a, b = analyze(plain, cfg(), progress=False), analyze(scaled, cfg(), progress=False)
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_allclose(np.abs(a.projection), np.abs(b.projection), rtol=1e-3, atol=1e-3)


def test_analysis_checks_each_trajectorys_files_once_over_its_passes(tmp_path, monkeypatch):
    """The streamed PCA reads every trajectory several times; the absent-file check (a stat per file)
    runs on the first read of each (array, trajectory) only, and on every one of them."""
    path = synthetic_store(tmp_path / "s.zarr")
    real, checked = store._absent, []

    def recording(array, selection):
        first = selection[0] if isinstance(selection, tuple) else selection
        if isinstance(first, (int, np.integer)):
            checked.append((array.path, int(first)))
        return real(array, selection)

    monkeypatch.setattr(store, "_absent", recording)
    analyze(path, cfg(), progress=False)
    features = {(name, i) for name in ("unet/up0_res0", "unet/up3_res0", "unet_exponent") for i in range(12)}
    assert features <= set(checked)
    assert len(checked) == len(set(checked)), sorted(c for c in checked if checked.count(c) > 1)[:5]
