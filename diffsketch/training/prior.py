"""The text-condition prior: a Gaussian over SD's CLIP text embeddings (the `prior` stage).

CDST draws random text conditions for training. As in the authors' code, the full token sequence
embedding (77 x D) of each caption of a corpus is flattened, PCA keeps ``prior.components``
directions, and a random condition is ``mean + sum_k z_k * component_k`` with independent
``z_k ~ N(0, variance_k)`` (the PCA's explained variances: a diagonal Gaussian in PCA space),
reshaped back to (77, D) and fed directly as cross-attention context.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffsketch.core import DiffsketchError, Params
from diffsketch.diffusion import (
    PromptsError,
    SDModel,
    check_model_reachable,
    clip_tokenizer,
    encode_prompts,
    load_model,
    load_prompts,
)

log = logging.getLogger(__name__)


class PriorError(DiffsketchError, ValueError):
    """The caption corpus or a saved prior is unusable; the message names it and the fix."""


@dataclass
class TextPrior:
    mean: torch.Tensor  # (L * D,) float32
    components: torch.Tensor  # (K, L * D) float32, orthonormal rows
    variances: torch.Tensor  # (K,) float32, the PCA explained variances
    shape: tuple[int, int]  # (L, D) = (77, text hidden size)
    meta: dict = field(default_factory=dict)

    @property
    def n_components(self) -> int:
        return len(self.variances)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random conditions (n, L, D), float32, from a CPU generator (reproducible)."""
        z = torch.randn(n, self.n_components, generator=generator) * self.variances.sqrt()
        return (self.mean + z @ self.components).reshape(n, *self.shape)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean.contiguous(), "components": self.components.contiguous(), "variances": self.variances}
        meta = {"shape": json.dumps(list(self.shape)), "meta": json.dumps(self.meta)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextPrior:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PriorError(f"text prior {path} not found; run `dvc repro prior` (or `diffsketch prior`) first")
        try:
            with safe_open(str(path), "pt") as f:
                tensors = {k: f.get_tensor(k) for k in ("mean", "components", "variances")}
                meta = f.metadata() or {}
            shape = tuple(json.loads(meta["shape"]))
            extra = json.loads(meta.get("meta", "{}"))
        except Exception as err:  # noqa: BLE001 - any read failure means the same thing to the user
            raise PriorError(f"text prior {path} is unreadable ({err}); delete it and rerun the prior stage") from None
        return cls(tensors["mean"], tensors["components"], tensors["variances"], shape, extra)


def fit_prior(embeddings: torch.Tensor, components: int, seed: int = 0, meta: dict | None = None) -> TextPrior:
    """PCA over flattened embeddings (N, L, D); keeps ``components`` directions."""
    from sklearn.decomposition import PCA

    n, length, dim = embeddings.shape
    if components >= n:
        raise PriorError(
            f"prior.components={components} needs more captions than components, but the corpus has {n}; "
            f"add captions or set prior.components <= {n - 1}"
        )
    x = embeddings.reshape(n, length * dim).double().numpy()
    pca = PCA(n_components=components, svd_solver="full", random_state=seed).fit(x)
    return TextPrior(
        mean=torch.from_numpy(pca.mean_).float(),
        components=torch.from_numpy(pca.components_).float().contiguous(),
        variances=torch.from_numpy(pca.explained_variance_).float(),
        shape=(length, dim),
        meta=dict(meta or {}, captions=n, explained_variance_ratio=float(pca.explained_variance_ratio_.sum())),
    )


def load_captions(source: str | Path) -> list[str]:
    try:
        captions = [p.text for p in load_prompts(source)]
    except PromptsError as err:
        raise PriorError(str(err).replace("prompts", "captions")) from None
    unique = list(dict.fromkeys(captions))
    if len(unique) < len(captions):
        log.warning("%d duplicate captions in %s ignored", len(captions) - len(unique), source)
    return unique


@torch.no_grad()
def encode_captions(model: SDModel, captions: list[str], batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    chunks = [captions[i : i + batch_size] for i in range(0, len(captions), batch_size)]
    out = [encode_prompts(model, chunk).float().cpu() for chunk in tqdm(chunks, desc="encoding captions", disable=not progress)]
    return torch.cat(out)


def run_prior(params: Params, out: str | Path, progress: bool = True, model: SDModel | None = None) -> TextPrior:
    """The `prior` stage: encode the caption corpus, fit the PCA-Gaussian, save it to ``out``."""
    cfg = params.prior
    captions = load_captions(cfg.captions)
    if cfg.components >= len(captions):
        raise PriorError(
            f"prior.components={cfg.components} needs more captions than components, but {cfg.captions} has "
            f"{len(captions)}; add captions or lower prior.components"
        )
    tokenizer = clip_tokenizer()
    too_long = [c for c, ids in zip(captions, tokenizer(captions, truncation=False).input_ids) if len(ids) > 77]
    if too_long:
        log.warning("%d captions are longer than 77 tokens and will be truncated, e.g. %r", len(too_long), too_long[0][:80])
    if model is None:
        check_model_reachable(params.model)
        model = load_model(params.model)
    embeddings = encode_captions(model, captions, progress=progress)
    prior = fit_prior(embeddings, cfg.components, cfg.seed, meta=dict(model=params.model.id, source=str(cfg.captions)))
    prior.save(out)
    log.info(
        "prior: %d captions, %d components explain %.1f%% of the variance -> %s",
        len(captions), cfg.components, 100 * prior.meta["explained_variance_ratio"], out,
    )  # fmt: skip
    return prior
