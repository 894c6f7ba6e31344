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

Given the model (``model=``: the ``model`` params or a loaded model), the first ``feature_maps``
trajectories are sampled again at full resolution at the chosen timesteps, and every UNet layer is
reduced to a colour map for the report (:mod:`diffsketch.analysis.feature_maps`: N x one sampling).
"""

from __future__ import annotations

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
    arrays: dict = field(default_factory=dict)  # layer name -> its zarr array (opened for fast reads)
    scales: dict[str, float] = field(default_factory=dict)
    means: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> FeatureReader:
        # zarrs decodes a trajectory's chunks in parallel in Rust, about 4x faster than zarr-python's
        # own pipeline here; an array opened under it keeps it (zarrs falls back by itself where a
        # store or codec is not supported).
        import zarrs  # noqa: F401 - registers its codec pipeline with zarr

        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            root = store.open_store(path)
            layers = [spec["name"] for spec in root.attrs["unet_layers"]]
            arrays = {name: root[f"unet/{name}"] for name in layers}
        halves = list(root.attrs["halves"])
        half = halves.index("cond") if "cond" in halves else 0
        return cls(root, layers, half, np.asarray(root["timesteps"][:]), arrays)

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

    def stored_block(self, name: str, index: int) -> np.ndarray:
        """(T, C * g * g) as stored (float16): one trajectory's chunks of one layer, read once."""
        x = store.read(self.arrays[name], (index, slice(None), self.half))  # (T, C, g, g); damage: a clear message
        return x.reshape(x.shape[0], -1)

    def blocks(self, index: int) -> list[np.ndarray]:
        """Every layer's (T, C * g * g) block of one trajectory, as stored."""
        return [self.stored_block(name, index) for name in self.layers]

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

    def metrics(self) -> dict:
        at_k = np.flatnonzero(self.k_values == self.k)
        return dict(
            k=int(self.k),
            silhouette=float(self.silhouette[at_k[0]]) if len(at_k) else float("nan"),
            explained_variance=float(self.explained_variance_ratio.sum()),
            points=int(len(self.row_step)),
        )


def trajectory_previews(reader: FeatureReader, trajectories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each trajectory's prompt and a THUMBNAIL x THUMBNAIL thumbnail of its final image (one image read each)."""
    root = reader.root
    names = [str(n) for n in root.attrs.get("prompts", [])]
    ids = np.asarray(root["prompt_ids"][:]) if "prompt_ids" in root else np.full(int(max(trajectories, default=-1)) + 1, -1)
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
            chosen = np.unique(np.linspace(0, steps - 1, k).round().astype(int))
        elif cfg.strategy == "random":
            chosen = np.random.default_rng(cfg.seed).choice(steps, size=k, replace=False)
        else:  # fixed
            chosen = np.array([int(np.flatnonzero(reader.timesteps == t)[0]) for t in cfg.fixed])
        clusters = np.full(len(chosen), -1)
    order = np.argsort(reader.timesteps[chosen])  # ascending timestep value
    chosen, clusters = np.asarray(chosen)[order], np.asarray(clusters)[order]
    sizes = np.array([(row_cluster == c).sum() if c >= 0 else (row_step == t).sum() for c, t in zip(clusters, chosen)])

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
    for name, rows in curves.items():
        (plots_dir / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
