"""Feature maps for the analysis report: what each UNet layer encodes at the chosen timesteps.

The store keeps average-pooled features only (``sample.pool``), so :func:`compute_feature_maps`
samples a few stored trajectories (the first ``analyze.feature_maps`` complete ones) again: each from
its stored prompt, initial noise and seed, with the store's sampling settings, through the one
denoising loop (:func:`diffsketch.diffusion.sampling.sample_conditions`) with full-resolution capture at the
chosen DDIM steps only. The cost is one more sampling of each shown trajectory: N x one sampling.
The re-sampled features, pooled as the store pools them, are compared with the stored ones, and a
warning says when they differ (a model or dtype other than the one that sampled the store).

Every layer is then reduced to colour by :func:`to_rgb`: scikit-learn's PCA over the layer's
channels, fitted on all of its pixels in the shown trajectories and chosen timesteps together (so a
colour means the same feature direction across the timesteps and trajectories of a layer; not
across layers), red, green and blue the first three components, each scaled from its 1st to its
99th percentile to [0, 1]. PCA's ``svd_flip`` fixes the signs, so the colours are deterministic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffsketch.core import ModelConfig
from diffsketch.diffusion import LayerSpec, pool_features
from diffsketch.store import zarr_store as store

log = logging.getLogger(__name__)

FILE = "feature_maps.npz"  # in the saved analysis folder, next to analysis.npz
COMPONENTS = 3  # red, green, blue
PERCENTILES = (1.0, 99.0)  # each component's range mapped to [0, 1]; the tails beyond are clipped
FINAL_SIDE = 128  # side of the trajectory's final image kept for the report
DEVIATION_WARNING = 0.02  # re-sampled vs stored features, max abs difference relative to the stored range

REQUIRED_ATTRS = ("steps", "guidance", "eta", "decode", "pool", "halves", "unet_layers", "prompts")
REQUIRED_ARRAYS = ("noise", "seeds", "prompt_ids", "images")


@dataclass
class FeatureMaps:
    """The report's feature maps: per layer, an RGB image of each (shown trajectory, chosen timestep)."""

    trajectory_ids: np.ndarray  # (N,) store indices of the shown trajectories
    prompts: np.ndarray  # (N,) their prompts
    steps: np.ndarray  # (k,) DDIM indices of the chosen timesteps, in denoising order (high t first)
    timesteps: np.ndarray  # (k,) their values
    layers: list[LayerSpec]  # the UNet layers, with channels and full-resolution side
    maps: list[np.ndarray]  # per layer (N, k, side, side, 3) uint8
    explained: np.ndarray  # (L, 3) explained variance ratio of each layer's three components
    finals: np.ndarray  # (N, S, S, 3) uint8: each trajectory's final image (from the store)

    def save(self, folder: str | Path) -> None:
        np.savez_compressed(
            Path(folder) / FILE, trajectory_ids=self.trajectory_ids, prompts=self.prompts, steps=self.steps,
            timesteps=self.timesteps, explained=self.explained, finals=self.finals,
            layer_names=np.array([s.name for s in self.layers]), layer_modules=np.array([s.module for s in self.layers]),
            layer_channels=np.array([s.channels for s in self.layers]), layer_sizes=np.array([s.size for s in self.layers]),
            **{f"map{i}": m for i, m in enumerate(self.maps)},
        )  # fmt: skip

    @classmethod
    def load(cls, folder: str | Path) -> FeatureMaps | None:
        """The feature maps saved in ``folder`` (None when the analysis was saved without them)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        z = dict(np.load(path))
        layers = [
            LayerSpec(str(n), str(m), int(c), int(s))
            for n, m, c, s in zip(z["layer_names"], z["layer_modules"], z["layer_channels"], z["layer_sizes"])
        ]
        return cls(
            z["trajectory_ids"], z["prompts"], z["steps"], z["timesteps"], layers,
            [z[f"map{i}"] for i in range(len(layers))], z["explained"], z["finals"],
        )  # fmt: skip


def missing_for_resampling(root) -> list[str]:
    """What a store lacks to have its trajectories sampled again (stores of older versions); empty when nothing."""
    attrs = [f"attrs[{a!r}]" for a in REQUIRED_ATTRS if a not in root.attrs]
    return attrs + [f"array {a!r}" for a in REQUIRED_ARRAYS if a not in root]


def stored_layers(root) -> list[LayerSpec]:
    """The store's UNet layer table (channels and full-resolution side of each layer)."""
    return [LayerSpec(**spec) for spec in root.attrs["unet_layers"]]


def stored_prompt(root, index: int) -> str:
    """The prompt trajectory ``index`` of the store was sampled with."""
    prompt_id = int(store.read(root["prompt_ids"], int(index)))
    return str(root.attrs["prompts"][prompt_id])


def final_image(root, index: int, side: int) -> np.ndarray:
    """(side, side, 3) uint8: trajectory ``index``'s final image from the store, box-filtered to ``side``."""
    from PIL import Image

    image = Image.fromarray(np.asarray(store.read(root["images"], int(index)), dtype=np.uint8)).convert("RGB")  # damage: a clear message
    return np.asarray(image.resize((side, side), Image.Resampling.BOX))


def resample_features(model, root, index: int, steps, half: str) -> dict[str, torch.Tensor]:
    """Trajectory ``index`` of the store sampled again, as the store sampled it (its prompt, initial noise
    and seed; the store's steps, guidance, eta and decode); the CFG ``half`` of every UNet layer at full
    resolution at the DDIM step indices ``steps`` (in that order): ``{layer: (len(steps), C, side, side)}``,
    float16 on the CPU."""
    from diffsketch.diffusion import Capture, encode_prompts, sample_conditions

    attrs = root.attrs
    noise = torch.from_numpy(np.asarray(store.read(root["noise"], int(index)), dtype=np.float32))[None]
    guidance = float(attrs["guidance"])
    kept = sorted({int(s) for s in steps})  # the capture keeps the steps in denoising order
    result = sample_conditions(
        model,
        encode_prompts(model, [stored_prompt(root, index)]),
        noise,
        steps=int(attrs["steps"]),
        guidance=guidance,
        eta=float(attrs["eta"]),
        seeds=[int(store.read(root["seeds"], int(index)))],
        capture=Capture(unet=stored_layers(root), halves=half, keep=kept),
        classifier_free_guidance=guidance > 1.0,
        decode=str(attrs["decode"]),
    )
    order = [kept.index(int(s)) for s in steps]
    return {name: x[0, order, 0] for name, x in result.unet.items()}


def deviation_from_store(features: dict[str, torch.Tensor], root, index: int, steps, half: int) -> float:
    """Largest abs difference between ``features`` pooled as the store pools them and the stored features
    (trajectory ``index``, ``steps``, CFG half index ``half``), relative to each layer's stored range."""
    pool = root.attrs["pool"]
    worst = 0.0
    for spec in stored_layers(root):
        pooled = pool_features(features[spec.name].float(), spec.grid(pool)).numpy()
        stored = np.asarray(store.read_features(root, "unet", spec.name, (int(index), slice(None), half)), dtype=np.float32)
        stored = stored[list(steps)]
        scale = float(np.abs(stored).max()) or 1.0
        worst = max(worst, float(np.abs(pooled - stored).max()) / scale)
    return worst


def to_rgb(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., C, H, W) features to (..., H, W, 3) colours in [0, 1], and the components' explained variance ratios.

    One PCA over the C channels, fitted on every pixel of the input (every leading index together, so
    colours compare across them); its first three components (fewer when C or the pixels are fewer: the
    missing ones stay 0), each scaled from its 1st to its 99th percentile to [0, 1] and clipped.
    """
    from sklearn.decomposition import PCA

    channels = features.shape[-3]
    pixels = np.moveaxis(features, -3, -1).reshape(-1, channels).astype(np.float32)
    n = min(COMPONENTS, channels, len(pixels))
    pca = PCA(n_components=n, svd_solver="covariance_eigh").fit(pixels)
    scores = pca.transform(pixels)
    low, high = np.percentile(scores, PERCENTILES, axis=0)
    span = np.where(high > low, high - low, 1.0)
    rgb = np.zeros((len(pixels), COMPONENTS), np.float32)
    rgb[:, :n] = np.clip((scores - low) / span, 0.0, 1.0)
    explained = np.zeros(COMPONENTS)
    explained[:n] = np.nan_to_num(pca.explained_variance_ratio_)
    shape = features.shape[:-3] + features.shape[-2:] + (COMPONENTS,)
    return rgb.reshape(shape), explained


def compute_feature_maps(
    model: ModelConfig | object, root, trajectories, steps, half: int, progress: bool = False
) -> FeatureMaps:
    """Re-sample ``trajectories`` of the store and reduce every UNet layer at ``steps`` to colour.

    ``model``: the ``model`` params (the model is loaded here) or an already loaded :class:`SDModel`;
    ``half``: the index into the store's ``halves`` of the CFG half the analysis reads.
    """
    from diffsketch.diffusion import load_model

    if isinstance(model, ModelConfig):
        # a few samplings do not pay back torch.compile's minutes: `auto` runs them eager (`on` still compiles)
        model = load_model(model.model_copy(update={"compile": "off"}) if model.compile == "auto" else model)
    half_name = list(root.attrs["halves"])[half]
    trajectories, steps = [int(t) for t in trajectories], sorted({int(s) for s in steps})  # columns in denoising order
    features = []
    for index in tqdm(trajectories, desc="feature maps (re-sampling)", disable=not progress):
        sampled = resample_features(model, root, index, steps, half_name)
        deviation = deviation_from_store(sampled, root, index, steps, half)
        if deviation > DEVIATION_WARNING:
            log.warning(
                "trajectory %d sampled again differs from the store by up to %.1f%% of the features' range: the "
                "model params (model.*) may not be those that sampled the store; its feature maps may not match it",
                index, 100 * deviation,
            )  # fmt: skip
        features.append(sampled)
    layers = stored_layers(root)
    maps, explained = [], []
    for spec in layers:
        rgb, ratio = to_rgb(torch.stack([f[spec.name] for f in features]).float().numpy())  # from (N, k, C, H, W)
        maps.append((rgb * 255).round().astype(np.uint8))
        explained.append(ratio)
    return FeatureMaps(
        trajectory_ids=np.asarray(trajectories, dtype=np.int64),
        prompts=np.array([stored_prompt(root, i) for i in trajectories], dtype=str),
        steps=np.asarray(steps, dtype=np.int64),
        timesteps=np.asarray(store.read(root["timesteps"]))[steps],
        layers=layers,
        maps=maps,
        explained=np.asarray(explained),
        finals=np.stack([final_image(root, i, min(FINAL_SIDE, root["images"].shape[1])) for i in trajectories]),
    )
