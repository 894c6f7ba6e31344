"""The `analyze` stage: choose the representative denoising timesteps from a feature store.

Every (trajectory, timestep) becomes one vector: the concatenation of that step's UNet up-block
features (conditional CFG half when stored). With ``layer_weighting: equal`` each layer is centred
and scaled so that its total variance is 1. Without it the wide, high-resolution layers would
dominate the distance (at full resolution the 64x64 layers are over half of every SD 1.5 vector),
and the clustering would ignore the low-resolution, semantic layers. ``raw`` keeps the values as
stored. The store is streamed trajectory by trajectory, so memory stays flat in the number of
trajectories, and the vectors are reduced to ``pca_dims`` principal components:

- ``pca: randomized`` (default): the streamed block Krylov PCA of :mod:`diffsketch.analysis.pca`, on the CPU
  or a GPU (``device``), in ``2 + power_iterations`` passes; the layer statistics ride along in
  the first pass. Its accuracy against an exact PCA is tested and benchmarked.
- ``pca: incremental``: the earlier path, kept for comparison: a pass for the layer statistics,
  scikit-learn's IncrementalPCA (a dense SVD per batch), then a pass to project every vector.

The projection is kept in memory (N x T x pca_dims floats). For the report's hover cards the
result also keeps each trajectory's prompt and a 64 x 64 thumbnail of its final image
(:func:`trajectory_previews`: one read of ``images`` per trajectory, 12 KiB each before compression).

k-means (MiniBatchKMeans when there are many points) runs for every k in [k_min, k_max], with
inertia (elbow) and a sampled, seeded silhouette score. ``k: auto`` takes the k with the best
silhouette (the smaller k on ties). One distinct timestep is then picked per cluster: the
assignment of timesteps to clusters that minimises the total mean distance between a timestep's
points and the cluster centre (Hungarian algorithm), so each cluster gets the timestep whose
points sit closest to its centre on average, and no timestep is used twice. ``k: 1`` (one timestep)
is k-means with a single cluster, whose centre is the mean of all points: the timestep chosen is the
one whose points sit closest on average to that overall centre (the sweep still runs for the plots).

How well a selection covers the trajectories is measured by the **selection distance**
(:func:`selection_distance`): the mean, over every trajectory and every timestep, of the Euclidean
distance in the PCA space from that timestep's point to the nearest selected timestep's point of the
same trajectory (a selected timestep is at distance 0 from itself). It is computed for the chosen k
and for every k of the sweep, for three selections of k timesteps (:func:`selection_distances`):

- ``representative``: the k-means selection at that k (the chosen timesteps when ``strategy`` is
  ``kmeans``);
- ``uniform``: :func:`uniform_timesteps`, the DDIM indices ``round(i (T - 1) / (k - 1))`` for
  i = 0 .. k-1 (both ends of the trajectory; index 0 for k = 1), as ``strategy: uniform`` picks them;
- ``random``: k distinct timesteps drawn uniformly at random; the mean over ``RANDOM_DRAWS`` seeded
  draws (every k-subset once instead when there are no more subsets than draws), and
  ``random_std``, the standard deviation of one random selection's distance over those draws.

Given the model (``model=``: the ``model`` params or a loaded model), the first ``feature_maps``
trajectories are sampled again at full resolution at the chosen timesteps, and every UNet layer is
reduced to a colour map for the report (:mod:`diffsketch.analysis.feature_maps`: N x one sampling).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import IncrementalPCA
from sklearn.metrics import silhouette_score
from tqdm.auto import tqdm

from diffsketch.analysis.feature_maps import FILE as FEATURE_MAPS_FILE
from diffsketch.analysis.feature_maps import FeatureMaps, compute_feature_maps, final_image, missing_for_resampling
from diffsketch.analysis.pca import randomized_pca
from diffsketch.core import AnalyzeConfig, DiffsketchError, ModelConfig, resolve_device
from diffsketch.store import zarr_store as store

log = logging.getLogger(__name__)
THUMBNAIL = 64  # side of each trajectory's final-image thumbnail kept for the report (12 KiB a trajectory)

MINIBATCH_ABOVE = 20_000  # points; above this k-means runs in mini-batches
RANDOM_DRAWS = 200  # seeded random selections averaged for the random selection distance
SELECTIONS = ("representative", "uniform", "random", "random_std")  # the selection-distance columns, in order
SILHOUETTE_SAMPLE = 5_000  # points used for each silhouette score


class AnalysisInputError(DiffsketchError, ValueError):
    """The store or the analysis params cannot give a valid analysis; the message says why."""


@dataclass
class FeatureReader:
    """Streams one (T, D) matrix per complete trajectory of a store."""

    root: object
    layers: list[str]
    half: int
    timesteps: np.ndarray  # (T,) in denoising order
    arrays: dict = field(default_factory=dict)  # "unet/<layer>" and "unet_exponent" -> zarr array (opened for fast reads)
    scales: dict[str, float] = field(default_factory=dict)
    means: dict[str, np.ndarray] = field(default_factory=dict)
    # (array path, trajectory) whose chunk files were found present on an earlier pass: the
    # analysis reads every trajectory several times, and one stat per file is enough
    present: set = field(default_factory=set)

    @classmethod
    def open(cls, path: str | Path) -> FeatureReader:
        # zarrs decodes a trajectory's chunks in parallel in Rust, about 4x faster than zarr-python's
        # own pipeline here; an array opened under it keeps it (zarrs falls back by itself where a
        # store or codec is not supported).
        import zarrs  # noqa: F401 - registers its codec pipeline with zarr

        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            root = store.open_store(path)
            layers = [spec["name"] for spec in root.attrs["unet_layers"]]
            arrays = {f"unet/{name}": root[f"unet/{name}"] for name in layers}
            if store.exponent_array("unet") in root:  # stores of format 3 on
                arrays[store.exponent_array("unet")] = root[store.exponent_array("unet")]
        halves = list(root.attrs["halves"])
        half = halves.index("cond") if "cond" in halves else 0
        return cls(root, layers, half, np.asarray(store.read(root["timesteps"])), arrays)

    @property
    def trajectories(self) -> np.ndarray:
        return np.flatnonzero(store.complete_mask(self.root))

    @property
    def widths(self) -> list[int]:
        """Values per vector of each layer (C * g * g)."""
        return [int(np.prod(self.root[f"unet/{n}"].shape[3:])) for n in self.layers]

    @property
    def dim(self) -> int:
        return sum(self.widths)

    def stored_block(self, name: str, index: int, exponents: np.ndarray | None = None) -> np.ndarray:
        """(T, C * g * g): one trajectory's chunks of one layer, read once; float16 as stored, or
        float32 where the store scaled a timestep's features down to fit float16. ``exponents``:
        the trajectory's :meth:`exponents`, when already read."""
        x = self._read(f"unet/{name}", (index, slice(None), self.half))  # (T, C, g, g); damage: a clear message
        exponents = self.exponents(index) if exponents is None else exponents
        if exponents is not None:
            x = store.scale_back(x, exponents[:, self.layers.index(name)])
        return x.reshape(x.shape[0], -1)

    def exponents(self, index: int) -> np.ndarray | None:
        """(T, layers): the powers of two one trajectory's features were stored divided by (None in
        stores written before them, format < 3)."""
        name = store.exponent_array("unet")
        return self._read(name, index) if name in self.arrays else None

    def _read(self, name: str, selection) -> np.ndarray:
        """:func:`~diffsketch.store.zarr_store.read` of ``self.arrays[name]``, checking for absent
        chunk files on the first read of each trajectory only."""
        index = int(selection[0] if isinstance(selection, tuple) else selection)
        x = store.read(self.arrays[name], selection, check_files=(name, index) not in self.present)
        self.present.add((name, index))
        return x

    def blocks(self, index: int) -> list[np.ndarray]:
        """Every layer's (T, C * g * g) block of one trajectory (its exponents read once)."""
        exponents = self.exponents(index)
        return [self.stored_block(name, index, exponents) for name in self.layers]

    def layer_block(self, name: str, index: int) -> np.ndarray:
        return self.stored_block(name, index).astype(np.float32)

    def matrix(self, index: int) -> np.ndarray:
        """(T, D): every layer of one trajectory, weighted as fitted (raw until ``fit_weights``)."""
        blocks = []
        for name in self.layers:
            x = self.layer_block(name, index)
            if name in self.scales:
                x = (x - self.means[name]) * self.scales[name]
            blocks.append(x)
        return np.concatenate(blocks, axis=1)

    def fit_weights(self, trajectories, progress: bool = False) -> None:
        """Per-layer mean and 1/sqrt(total variance): every layer then carries equal variance."""
        sums, squares, count = {}, {}, 0
        for index in tqdm(trajectories, desc="layer statistics", disable=not progress):
            for name in self.layers:
                x = self.layer_block(name, index).astype(np.float64)
                sums[name] = sums.get(name, 0) + x.sum(axis=0)
                squares[name] = squares.get(name, 0) + (x**2).sum(axis=0)
            count += len(self.timesteps)
        for name in self.layers:
            mean = sums[name] / count
            total_var = float(np.maximum(squares[name] / count - mean**2, 0).sum())
            self.means[name] = mean.astype(np.float32)
            self.scales[name] = 1.0 / math.sqrt(total_var) if total_var > 0 else 1.0


@dataclass
class AnalysisResult:
    timesteps: np.ndarray  # (T,) store timesteps, denoising order
    row_step: np.ndarray  # (R,) index into timesteps
    row_trajectory: np.ndarray  # (R,)
    row_label: np.ndarray  # (R,) class id
    classes: list[str]
    projection: np.ndarray  # (R, pca_dims)
    explained_variance_ratio: np.ndarray  # (pca_dims,)
    k_values: np.ndarray
    inertia: np.ndarray
    silhouette: np.ndarray
    k: int
    row_cluster: np.ndarray  # (R,) cluster of each point for the chosen k
    selected: np.ndarray  # (k,) sorted indices into timesteps (ascending timestep value)
    selected_cluster: np.ndarray  # (k,) the cluster each selected timestep represents (-1: none)
    cluster_sizes: np.ndarray  # (k,) points in that cluster
    meta: dict
    # For the report's hover cards, per trajectory of ``trajectory_ids`` (empty in analyses saved before them):
    trajectory_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) store indices
    prompts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))  # (N,) the trajectory's prompt
    thumbnails: np.ndarray = field(default_factory=lambda: np.zeros((0, THUMBNAIL, THUMBNAIL, 3), np.uint8))  # final images
    feature_maps: FeatureMaps | None = None  # the report's feature maps (None: off, or saved before them)
    # Selection distances (empty in analyses saved before them), columns in SELECTIONS order:
    selection_distance: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (4,) at the chosen k
    selection_k: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (K,) the swept k values
    selection_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SELECTIONS))))  # (K, 4)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}
        np.savez_compressed(folder / "analysis.npz", **arrays)
        if self.feature_maps is not None:
            self.feature_maps.save(folder)
        else:
            (folder / FEATURE_MAPS_FILE).unlink(missing_ok=True)  # none from an earlier run left behind
        info = dict(self.meta, classes=self.classes, k=self.k)
        (folder / "analysis.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> AnalysisResult:
        folder = Path(folder)
        if not (folder / "analysis.npz").is_file():
            raise AnalysisInputError(f"no saved analysis in {folder}; run `diffsketch analyze` first")
        arrays = dict(np.load(folder / "analysis.npz"))
        info = json.loads((folder / "analysis.json").read_text())
        classes, k = info.pop("classes"), info.pop("k")
        return cls(**arrays, classes=classes, k=k, meta=info, feature_maps=FeatureMaps.load(folder))

    def timesteps_json(self) -> dict:
        chosen = self.selected
        return dict(
            strategy=self.meta["strategy"],
            k=int(self.k),
            timesteps=[int(self.timesteps[i]) for i in chosen],
            ddim_indices=[int(i) for i in chosen],
            cluster_sizes=[int(s) for s in self.cluster_sizes],
            model=self.meta["model"],
            store_fingerprint=self.meta["store_fingerprint"],
            steps=len(self.timesteps),
        )

    def selection_distances(self) -> dict[str, float] | None:
        """The selection distances at the chosen k (None for an analysis saved without them)."""
        if len(self.selection_distance) != len(SELECTIONS):
            return None
        return {name: float(v) for name, v in zip(SELECTIONS, self.selection_distance)}

    def selection_distance_by_k(self) -> list[dict]:
        """One row per swept k: ``{"k", "representative", "uniform", "random", "random_std"}`` (empty when not saved)."""
        return [dict(k=int(k), **{name: float(v) for name, v in zip(SELECTIONS, row)})
                for k, row in zip(self.selection_k, self.selection_curve)]  # fmt: skip

    def metrics(self) -> dict:
        at_k = np.flatnonzero(self.k_values == self.k)
        out = dict(
            k=int(self.k),
            silhouette=float(self.silhouette[at_k[0]]) if len(at_k) else float("nan"),
            explained_variance=float(self.explained_variance_ratio.sum()),
            points=int(len(self.row_step)),
        )
        distances = self.selection_distances()
        if distances is not None:
            out["selection_distance"] = distances
        return out


def trajectory_previews(reader: FeatureReader, trajectories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each trajectory's prompt and a THUMBNAIL x THUMBNAIL thumbnail of its final image (one image read each)."""
    root = reader.root
    names = [str(n) for n in root.attrs.get("prompts", [])]
    ids = np.asarray(store.read(root["prompt_ids"])) if "prompt_ids" in root else np.full(int(max(trajectories, default=-1)) + 1, -1)
    prompts = np.array([names[ids[i]] if 0 <= ids[i] < len(names) else "" for i in trajectories], dtype=str)
    thumbs = np.zeros((len(trajectories), THUMBNAIL, THUMBNAIL, 3), np.uint8)
    if "images" in root:
        for j, i in enumerate(trajectories):
            thumbs[j] = final_image(root, i, THUMBNAIL)
    return prompts, thumbs


def knee(k_values: np.ndarray, inertia: np.ndarray) -> int:
    """The elbow: the k farthest below the straight line joining the ends of the normalised curve."""
    if len(k_values) < 3:
        return int(k_values[0])
    x = (k_values - k_values[0]) / (k_values[-1] - k_values[0])
    span = inertia[0] - inertia[-1]
    y = (inertia - inertia[-1]) / span if span > 0 else np.zeros_like(inertia)
    return int(k_values[np.argmax((1 - x) - y)])


def _kmeans(k: int, n_points: int, seed: int):
    if n_points > MINIBATCH_ABOVE:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    return KMeans(n_clusters=k, random_state=seed, n_init=10)


def sweep_k(projection: np.ndarray, cfg: AnalyzeConfig, progress: bool = False):
    """k-means for every k of the sweep (and ``cfg.k``): (k values, inertia, silhouette, fitted models)."""
    k_values = np.arange(cfg.k_min, cfg.k_max + 1)
    if isinstance(cfg.k, int) and cfg.k >= 2 and cfg.k not in k_values:  # k = 1 has no silhouette: see _single_cluster
        k_values = np.sort(np.append(k_values, cfg.k))
    k_values = k_values[k_values < len(projection)]
    sample_size = min(len(projection), SILHOUETTE_SAMPLE)
    inertia, silhouette, fitted = [], [], {}
    for k in tqdm(k_values, desc="k-means sweep", disable=not progress):
        km = _kmeans(int(k), len(projection), cfg.seed).fit(projection)
        fitted[int(k)] = km
        inertia.append(-km.score(projection))
        silhouette.append(silhouette_score(projection, km.labels_, sample_size=sample_size, random_state=cfg.seed))
    return k_values, np.asarray(inertia), np.asarray(silhouette), fitted


class _SingleCluster:
    """k = 1 (``analyze.k: 1``, the paper's single-timestep ablation): the one k-means cluster is every point,
    its centre the mean of all points, so the timestep chosen is the one whose points sit closest to it on average."""

    def __init__(self, projection: np.ndarray):
        self.cluster_centers_ = projection.mean(axis=0, keepdims=True)
        self.labels_ = np.zeros(len(projection), dtype=np.int32)


def _check(cfg: AnalyzeConfig, reader: FeatureReader, n_traj: int) -> None:
    steps = len(reader.timesteps)
    if n_traj == 0:
        raise AnalysisInputError("the store has no complete trajectories; run `diffsketch sample` (or `dvc repro sample`) to fill it")
    if cfg.strategy == "kmeans" and cfg.k_max >= steps:
        raise AnalysisInputError(
            f"analyze.k_max={cfg.k_max} must be below the number of timesteps ({steps}); lower it or sample more steps"
        )
    if isinstance(cfg.k, int) and cfg.k > steps:
        raise AnalysisInputError(f"analyze.k={cfg.k} exceeds the number of timesteps ({steps})")
    limit = min(reader.dim, n_traj * steps)
    if cfg.pca_dims > limit:
        raise AnalysisInputError(
            f"analyze.pca_dims={cfg.pca_dims} is larger than the data allows ({limit}: min of feature size {reader.dim} "
            f"and {n_traj} trajectories x {steps} steps); lower it or sample more trajectories"
        )
    if cfg.pca == "randomized":
        resolve_device(cfg.device, "analyze.device", AnalysisInputError)
    if cfg.strategy == "fixed":
        missing = sorted(set(cfg.fixed) - set(int(t) for t in reader.timesteps))
        if not cfg.fixed or missing:
            raise AnalysisInputError(
                f"analyze.fixed must list timesteps of the store ({', '.join(map(str, reader.timesteps))}); "
                f"not in it: {missing or 'empty list'}"
            )


def _batches(trajectories: np.ndarray, steps: int, min_rows: int) -> list[np.ndarray]:
    """Groups of trajectories with at least ``min_rows`` rows each (IncrementalPCA needs it)."""
    size = max(1, math.ceil(min_rows / steps))
    groups = [trajectories[i : i + size] for i in range(0, len(trajectories), size)]
    if len(groups) > 1 and len(groups[-1]) * steps < min_rows:
        groups[-2] = np.concatenate([groups[-2], groups.pop()])
    return groups


def _incremental_pca(reader: FeatureReader, trajectories, cfg: AnalyzeConfig, progress: bool):
    """The earlier path: a pass for the layer statistics, IncrementalPCA, a pass to project."""
    steps = len(reader.timesteps)
    if cfg.layer_weighting == "equal":
        reader.fit_weights(trajectories, progress)
    pca = IncrementalPCA(n_components=cfg.pca_dims)
    for group in tqdm(_batches(trajectories, steps, cfg.pca_dims), desc="PCA fit", disable=not progress):
        pca.partial_fit(np.concatenate([reader.matrix(i) for i in group]))
    projection = np.concatenate(
        [pca.transform(reader.matrix(i)) for i in tqdm(trajectories, desc="PCA project", disable=not progress)]
    ).astype(np.float32)
    return projection, pca.explained_variance_ratio_


def select_timesteps(projection, row_step, centers, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """One distinct timestep per cluster, minimising the total mean distance to the centres."""
    cost = np.zeros((len(centers), steps))
    for t in range(steps):
        points = projection[row_step == t]
        cost[:, t] = np.linalg.norm(points[:, None, :] - centers[None], axis=2).mean(axis=0)
    clusters, chosen = linear_sum_assignment(cost)
    return chosen, clusters


def uniform_timesteps(steps: int, k: int) -> np.ndarray:
    """k equally spaced DDIM indices over a trajectory of ``steps`` timesteps, both ends included.

    The indices are ``round(i * (steps - 1) / (k - 1))`` for i = 0 .. k-1 (numpy rounding, half to
    even), sorted; for k = 1 the one index is 0, the first denoising step. For 1 <= k <= steps they
    are k distinct indices (consecutive ones are at least one apart before rounding).

    Example:
        >>> uniform_timesteps(20, 5).tolist()
        [0, 5, 10, 14, 19]
    """
    return np.unique(np.linspace(0, steps - 1, k).round().astype(int))


def step_distances(features: np.ndarray, chunk: int = 64) -> np.ndarray:
    """(N, T, d) points of N trajectories -> (N, T, T) Euclidean distances between timesteps of each trajectory."""
    features = np.asarray(features, dtype=np.float64)
    out = np.empty(features.shape[:2] + features.shape[1:2])
    for i in range(0, len(features), chunk):
        f = features[i : i + chunk]
        out[i : i + chunk] = np.linalg.norm(f[:, :, None, :] - f[:, None, :, :], axis=3)
    return out


def selection_distance(features: np.ndarray, selected, distances: np.ndarray | None = None) -> float:
    """Mean distance from every (trajectory, timestep) point to the nearest selected timestep's point.

    For each trajectory n and timestep t, the Euclidean distance from ``features[n, t]`` to the
    nearest of ``features[n, s]`` over the selected timesteps s (0 when t is selected), averaged over
    every n and t. Lower means the selected timesteps summarise the trajectories better.

    Args:
        features: (N, T, d) points, N trajectories of T timesteps (the analysis projection).
        selected: the selected timestep indices (into T), at least one.
        distances: :func:`step_distances` of ``features``, when already computed.

    Returns:
        The mean distance.

    Example:
        Two trajectories of 4 timesteps on a line, at 0, 1, 2, 3 and at 0, 2, 4, 6; timesteps 0 and 3
        selected. The nearest selected point is 0, 1 away, 1 away and 0 (first) and 0, 2, 2, 0
        (second), so the mean is (0 + 1 + 1 + 0 + 0 + 2 + 2 + 0) / 8 = 0.75:

        >>> x = np.array([[[0.0], [1.0], [2.0], [3.0]], [[0.0], [2.0], [4.0], [6.0]]])
        >>> selection_distance(x, [0, 3])
        0.75
    """
    return _nearest_mean(step_distances(features) if distances is None else distances, selected)


def _nearest_mean(distances: np.ndarray, selected) -> float:
    selected = np.asarray(selected, dtype=int)
    if selected.size == 0:
        raise ValueError("selection_distance needs at least one selected timestep")
    return float(distances[:, :, selected].min(axis=2).mean())


def selection_distances(features: np.ndarray, representative, draws: int = RANDOM_DRAWS, seed: int = 0,
                        distances: np.ndarray | None = None) -> dict[str, float]:
    """:func:`selection_distance` of the representative, the uniform and random selections of the same k.

    k is ``len(representative)``. ``uniform``: :func:`uniform_timesteps`. ``random``: the mean over
    ``draws`` selections of k distinct timesteps, each drawn uniformly without replacement from a
    generator seeded with ``seed``, and ``random_std`` their sample standard deviation (ddof = 1);
    when there are at most ``draws`` k-subsets of the T timesteps, every one of them is used once
    instead: the exact mean and standard deviation (ddof = 0) over all k-subsets.

    Example:
        One trajectory at 0, 1, 2, 10 and k = 2. The representative pair (1, 3) leaves the points
        1, 0, 1, 0 away (mean 0.5); uniform (0, 3) leaves them 0, 1, 2, 0 away (0.75). The 6 pairs
        (0,1) (0,2) (0,3) (1,2) (1,3) (2,3) leave distance totals 10, 9, 3, 9, 2, 3 over the 4 points,
        so random is 36 / (4 * 6) = 1.5, exactly (6 subsets, fewer than the draws):

        >>> x = np.array([[[0.0], [1.0], [2.0], [10.0]]])
        >>> d = selection_distances(x, [1, 3])
        >>> d["representative"], d["uniform"], d["random"]
        (0.5, 0.75, 1.5)
    """
    d = step_distances(features) if distances is None else distances
    steps, k = d.shape[1], len(representative)
    if not 1 <= k <= steps:
        raise ValueError(f"need 1 <= k <= {steps} selected timesteps, got {k}")
    if math.comb(steps, k) <= draws:
        values = np.array([_nearest_mean(d, s) for s in itertools.combinations(range(steps), k)])
        std = float(values.std())
    else:
        rng = np.random.default_rng(seed)
        values = np.array([_nearest_mean(d, rng.choice(steps, size=k, replace=False)) for _ in range(draws)])
        std = float(values.std(ddof=1))
    return dict(representative=_nearest_mean(d, representative),
                uniform=_nearest_mean(d, uniform_timesteps(steps, k)),
                random=float(values.mean()), random_std=std)  # fmt: skip


def _selection_table(features: np.ndarray, row_step: np.ndarray, projection: np.ndarray, k: int, centers,
                     k_values, fitted: dict, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selection distances at the chosen k (with its ``centers``) and at every swept k <= T: (at k, swept k, curve)."""
    steps = features.shape[1]
    d = step_distances(features)

    def row(cs) -> list[float]:
        representative, _ = select_timesteps(projection, row_step, cs, steps)
        distances = selection_distances(features, representative, seed=seed, distances=d)
        return [distances[name] for name in SELECTIONS]

    swept = np.array([int(kk) for kk in k_values if kk <= steps], dtype=np.int64)
    curve = np.array([row(fitted[int(kk)].cluster_centers_) for kk in swept]).reshape(-1, len(SELECTIONS))
    at_k = np.flatnonzero(swept == k)
    return (curve[at_k[0]] if len(at_k) else np.array(row(centers))), swept, curve


def _feature_map_model(cfg: AnalyzeConfig, reader: FeatureReader, model):
    """The model the feature maps sample with (None: no feature maps), checked before any expensive work."""
    if not cfg.feature_maps:
        return None
    if model is None:
        log.info("analyze.feature_maps=%d but no model was given: no feature maps", cfg.feature_maps)
        return None
    name = model.id if isinstance(model, ModelConfig) else getattr(model, "source", None)
    if name != reader.root.attrs.get("model"):
        raise AnalysisInputError(
            f"the store was sampled with model {reader.root.attrs.get('model')!r}, but the feature maps would sample with "
            f"{name!r}; fix model.id, or set analyze.feature_maps=0"
        )
    missing = missing_for_resampling(reader.root)
    if missing:
        raise AnalysisInputError(
            f"analyze.feature_maps={cfg.feature_maps} samples trajectories again, but the store lacks {', '.join(missing)} "
            "(written by an older diffsketch); set analyze.feature_maps=0, or resample the store (`dvc repro sample`)"
        )
    if isinstance(model, ModelConfig):
        from diffsketch.diffusion import check_model_reachable

        check_model_reachable(model)
    return model


def analyze(
    store_path: str | Path,
    cfg: AnalyzeConfig,
    model_id: str | None = None,
    progress: bool = True,
    model: ModelConfig | object | None = None,
) -> AnalysisResult:
    """Choose the representative timesteps of the store at ``store_path``.

    ``model_id``: the params' ``model.id``, checked against the store's; ``model``: the ``model`` params
    (loaded only for the feature maps) or an already loaded :class:`~diffsketch.diffusion.models.SDModel`, with which
    the first ``cfg.feature_maps`` trajectories are sampled again for the report (without it: no feature maps).
    """
    reader = FeatureReader.open(store_path)
    if model_id is not None and reader.root.attrs.get("model") != model_id:
        raise AnalysisInputError(
            f"the store was sampled with model {reader.root.attrs.get('model')!r} but params say model.id={model_id!r}; "
            "resample (`dvc repro sample`) or fix model.id"
        )
    trajectories = reader.trajectories
    _check(cfg, reader, len(trajectories))
    model = _feature_map_model(cfg, reader, model)
    steps = len(reader.timesteps)

    started = time.perf_counter()
    if cfg.pca == "randomized":
        fit = randomized_pca(
            reader.blocks, trajectories, steps, reader.widths, cfg.pca_dims,
            equal_weights=cfg.layer_weighting == "equal", oversamples=cfg.oversamples,
            power_iterations=cfg.power_iterations, seed=cfg.seed, device=resolve_device(cfg.device, "analyze.device"), progress=progress,
        )  # fmt: skip
        projection, explained = fit.projection, fit.explained_variance_ratio
    else:
        projection, explained = _incremental_pca(reader, trajectories, cfg, progress)
    pca_seconds = time.perf_counter() - started
    row_step = np.tile(np.arange(steps), len(trajectories))
    row_trajectory = np.repeat(trajectories, steps)
    labels = np.asarray(store.read(reader.root["labels"]))[row_trajectory]

    prompts, thumbnails = trajectory_previews(reader, trajectories)
    k_values, inertia, silhouette, fitted = sweep_k(projection, cfg, progress)
    best = int(k_values[np.argmax(silhouette)])
    if cfg.k == "auto" and best == k_values[-1] and len(k_values) > 1:
        log.warning("the best silhouette is at k_max=%d, the edge of the sweep; consider raising analyze.k_max", best)
    k = best if cfg.k == "auto" else int(cfg.k)
    km = _SingleCluster(projection) if k == 1 else fitted[k]
    row_cluster = km.labels_

    if cfg.strategy == "kmeans":
        chosen, clusters = select_timesteps(projection, row_step, km.cluster_centers_, steps)
    else:
        if cfg.strategy == "uniform":
            chosen = uniform_timesteps(steps, k)
        elif cfg.strategy == "random":
            chosen = np.random.default_rng(cfg.seed).choice(steps, size=k, replace=False)
        else:  # fixed
            chosen = np.array([int(np.flatnonzero(reader.timesteps == t)[0]) for t in cfg.fixed])
        clusters = np.full(len(chosen), -1)
    order = np.argsort(reader.timesteps[chosen])  # ascending timestep value
    chosen, clusters = np.asarray(chosen)[order], np.asarray(clusters)[order]
    sizes = np.array([(row_cluster == c).sum() if c >= 0 else (row_step == t).sum() for c, t in zip(clusters, chosen)])
    at_k, selection_k, selection_curve = _selection_table(projection.reshape(len(trajectories), steps, -1), row_step,
                                                          projection, k, km.cluster_centers_, k_values, fitted, cfg.seed)

    meta = dict(
        strategy=cfg.strategy,
        layer_weighting=cfg.layer_weighting,
        pca=cfg.pca,
        pca_seconds=round(pca_seconds, 3),
        seed=cfg.seed,
        k_auto=best,
        knee_k=knee(k_values, inertia),
        model=reader.root.attrs.get("model"),
        store=str(store_path),
        store_fingerprint=reader.root.attrs["fingerprint"],
        trajectories=int(len(trajectories)),
        feature_dim=reader.dim,
        layers=reader.layers,
        half=list(reader.root.attrs["halves"])[reader.half],
    )
    feature_maps = None
    if model is not None:
        started = time.perf_counter()
        shown = trajectories[: cfg.feature_maps]
        feature_maps = compute_feature_maps(model, reader.root, shown, chosen, reader.half, progress)
        meta["feature_map_seconds"] = round(time.perf_counter() - started, 3)
    return AnalysisResult(
        timesteps=reader.timesteps,
        row_step=row_step,
        row_trajectory=row_trajectory,
        row_label=labels,
        classes=list(reader.root.attrs.get("classes", [])),
        projection=projection,
        explained_variance_ratio=np.asarray(explained),
        k_values=k_values,
        inertia=inertia,
        silhouette=silhouette,
        k=k,
        row_cluster=row_cluster,
        selected=chosen,
        selected_cluster=clusters,
        cluster_sizes=sizes,
        meta=meta,
        trajectory_ids=np.asarray(trajectories, dtype=np.int64),
        prompts=prompts,
        thumbnails=thumbnails,
        feature_maps=feature_maps,
        selection_distance=at_k,
        selection_k=selection_k,
        selection_curve=selection_curve,
    )


def write_outputs(result: AnalysisResult, results_dir: str | Path, timesteps_path: str | Path, plots_dir: str | Path) -> None:
    """Saved results (for `diffsketch report`), timesteps.json, and DVC metrics and plot files."""
    result.save(results_dir)
    timesteps_path = Path(timesteps_path)
    timesteps_path.parent.mkdir(parents=True, exist_ok=True)
    timesteps_path.write_text(json.dumps(result.timesteps_json(), indent=2) + "\n")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    (plots_dir / "metrics.json").write_text(json.dumps(result.metrics(), indent=2) + "\n")
    curves = dict(
        elbow=[dict(k=int(k), inertia=float(v)) for k, v in zip(result.k_values, result.inertia)],
        silhouette=[dict(k=int(k), silhouette=float(v)) for k, v in zip(result.k_values, result.silhouette)],
        explained_variance=[
            dict(component=i + 1, ratio=float(r), cumulative=float(c))
            for i, (r, c) in enumerate(zip(result.explained_variance_ratio, np.cumsum(result.explained_variance_ratio)))
        ],
    )
    if len(result.selection_k):
        curves["selection_distance"] = result.selection_distance_by_k()
    for name, rows in curves.items():
        (plots_dir / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
