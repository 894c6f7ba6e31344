import json

import numpy as np
import pytest

from diffsketch.store import zarr_store as store
from diffsketch.analysis.timesteps import AnalysisInputError, AnalysisResult, analyze, knee, select_timesteps, write_outputs
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
