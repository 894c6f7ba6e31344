"""The training losses (method.md §4), with frozen CLIP and LPIPS networks.

    total = l1 * |S^_src - S_src|                       (example reconstruction)
          + lpips * LPIPS(S^_src, S_src)                 (inputs in [-1, 1], full resolution)
          + clip * (1 - cos(E(S^_src), E(S_src)))        (CLIP reconstruction)
          + across * (1 - cos(E(S^_new) - E(I_new), E(S_src) - E(I_src)))   (directional, across domains)
          + within * (1 - cos(E(S^_new) - E(S_src), E(I_new) - E(I_src)))  (directional, within domains)

E is a frozen open_clip image encoder fed CLIP's own normalisation at its input size (the authors
used ImageNet statistics and kept CLIP trainable, both fixed here); E(I_src) and E(S_src) are
computed once. Sketches are in [0, 1] (1 = paper) and repeated to three channels. Weights that were
trained with QuickGELU (OpenAI's, and every tag open_clip marks ``quick_gelu``) get a QuickGELU
model: open_clip's plain architectures use nn.GELU and would only warn about the mismatch.

Offline there are no pretrained weights. ``losses.clip_model=auto`` and ``losses.lpips_net=auto``
then fall back, with a logged warning, to a seeded tiny CLIP and to LPIPS's linear heads on a
seeded random AlexNet: the pipeline runs end to end, but those losses only mean something with the
real networks (name them explicitly to make a missing download an error). open_clip's own log
records (on the root logger: "Failed to download weights" at ERROR, and its INFO chatter) are held
back while it loads; the one warning of this module says what is used instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.core import DiffsketchError, LossConfig

log = logging.getLogger(__name__)

REAL_CLIP = "ViT-B-32:openai"
TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1, used by LPIPS


class LossSetupError(DiffsketchError, RuntimeError):
    """A loss network could not be loaded; the message says what was tried and how to fix it."""


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _uses_quick_gelu(module: nn.Module) -> bool:
    """Whether the built tower's activations are open_clip's QuickGELU (x * sigmoid(1.702 x))."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in module.modules())


class ClipImageEncoder(nn.Module):
    """A frozen open_clip image tower behind a differentiable preprocessing: [0, 1] images (1 or 3
    channels, any square size) -> bicubic resize to the model's input size -> CLIP mean/std ->
    unit-norm embeddings. ``quick_gelu`` records the activation the tower was built with."""

    def __init__(self, visual: nn.Module, size: int, mean=CLIP_MEAN, std=CLIP_STD, name: str = ""):
        super().__init__()
        self.visual = _frozen(visual)
        self.size, self.name = size, name
        self.quick_gelu = _uses_quick_gelu(visual)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return F.normalize(self.visual(x).float(), dim=-1)


class _FromOpenClip(logging.Filter):
    """Drops the records open_clip writes to the root logger (``logging.error(...)`` in its factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and f"{os.sep}open_clip{os.sep}" in record.pathname)


@contextlib.contextmanager
def _quiet_open_clip():
    """Hold back open_clip's root-logger records while it builds or loads a model.

    ``logging.error`` on a root logger without handlers would also install a stderr handler
    (``logging.basicConfig``); a temporary null handler keeps the root logger as it was.
    """
    root, drop = logging.getLogger(), _FromOpenClip()
    placeholder = logging.NullHandler() if not root.handlers else None
    root.addFilter(drop)
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if placeholder is not None:
            root.removeHandler(placeholder)


def _tiny_clip() -> ClipImageEncoder:
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**TINY_CLIP)
    return ClipImageEncoder(model.visual, TINY_CLIP["vision_cfg"]["image_size"], name="tiny")


def load_clip(spec: str, device: torch.device | str = "cpu") -> ClipImageEncoder:
    """``auto`` | ``tiny`` | ``<open_clip architecture>:<pretrained tag or local checkpoint file>``.

    The activation follows the weights: a pretrained tag that open_clip's metadata marks
    ``quick_gelu`` (``openai`` for every architecture, and some others) builds the model with
    QuickGELU. A local checkpoint keeps the architecture's own activation, so OpenAI weights from a
    file need the ``-quickgelu`` architecture (``ViT-B-32-quickgelu:/path/to/ViT-B-32.pt``)."""
    import open_clip

    if spec == "tiny":
        return _tiny_clip().to(device)
    name = REAL_CLIP if spec == "auto" else spec
    arch, _, pretrained = name.partition(":")
    if arch not in open_clip.list_models():
        raise LossSetupError(f"losses.clip_model={spec!r}: unknown open_clip architecture {arch!r} (e.g. ViT-B-32)")
    if pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))) and not Path(pretrained).is_file():
        raise LossSetupError(f"losses.clip_model={spec!r}: checkpoint file {pretrained} not found")
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))  # how the tag's weights were trained
    try:
        with _quiet_open_clip():
            model = open_clip.create_model(arch, pretrained=pretrained or None, device=device, force_quick_gelu=quick_gelu)
    except Exception as err:  # noqa: BLE001 - open_clip raises RuntimeError/OSError/HF errors for the same cause
        if spec != "auto":
            raise LossSetupError(
                f"losses.clip_model={spec!r} could not be loaded ({str(err).splitlines()[0][:200]}). Download the weights "
                "where the hub is reachable (they are cached for offline use), pass a local checkpoint as "
                "'ViT-B-32-quickgelu:/path/to/ViT-B-32.pt', or use 'tiny' for offline tests"
            ) from None
        log.warning(
            "CLIP %s weights are not available offline (losses.clip_model=auto); using a tiny random CLIP instead. "
            "The CLIP and directional losses then compare a random network's embeddings: they run, but do not "
            "guide the style as the method intends. Set losses.clip_model to a local checkpoint (e.g. 'ViT-B-32-quickgelu:/path/to/ViT-B-32.pt') "
            "for real training",
            REAL_CLIP,
        )
        return _tiny_clip().to(device)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    encoder = ClipImageEncoder(model.visual, int(size), cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD), name)
    log.info("CLIP %s: %d px input, %s activations", name, encoder.size, "QuickGELU" if encoder.quick_gelu else "GELU")
    return encoder.to(device)


def alexnet_cached() -> Path | None:
    path = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return path if path.is_file() else None


def load_lpips(net: str, device: torch.device | str = "cpu") -> nn.Module:
    """LPIPS (AlexNet, v0.1 linear heads shipped with the ``lpips`` package). ``auto`` uses the real
    backbone when torchvision's AlexNet weights are cached, else a seeded random one (logged)."""
    import lpips

    cached = alexnet_cached()
    if net == "alex" and cached is None:
        raise LossSetupError(
            f"losses.lpips_net=alex needs torchvision's AlexNet weights at {Path(torch.hub.get_dir()) / 'checkpoints' / ALEXNET_FILE}; "
            "download them once where the internet is reachable (torchvision.models.alexnet(weights='DEFAULT')) "
            "and copy the file there, or set losses.lpips_net=auto"
        )
    real = net == "alex" or (net == "auto" and cached is not None)
    if not real:
        log.warning(
            "LPIPS: AlexNet weights not found in %s; using LPIPS's linear heads on a random AlexNet (offline "
            "fallback, values not comparable to published LPIPS)",
            Path(torch.hub.get_dir()) / "checkpoints",
        )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)  # lpips's legacy call
        torch.manual_seed(0)
        model = lpips.LPIPS(net="alex", pnet_rand=not real, verbose=False)
    model.backbone = "alex" if real else "random"
    return _frozen(model).to(device)


def _one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(a, b, dim=-1)).mean()


class SketchLoss(nn.Module):
    """Weighted sum of the five terms; the example's CLIP embeddings are computed once."""

    TERMS = ("l1", "lpips", "clip", "across", "within")

    def __init__(self, cfg: LossConfig, clip: ClipImageEncoder, lpips_net: nn.Module, image: torch.Tensor, sketch: torch.Tensor):
        super().__init__()
        self.weights = {name: float(getattr(cfg, name)) for name in self.TERMS}
        self.clip, self.lpips = clip, lpips_net
        self.register_buffer("sketch", sketch.float(), persistent=False)  # (1, 1, H, W) in [0, 1]
        with torch.no_grad():
            self.register_buffer("e_image", clip(image.float()), persistent=False)
            self.register_buffer("e_sketch", clip(sketch.float()), persistent=False)

    def forward(
        self, pred_example: torch.Tensor, pred_new: torch.Tensor, new_images: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``pred_example`` (1, 1, H, W) and ``pred_new`` (B, 1, H, W) sketches in [0, 1],
        ``new_images`` (B, 3, H, W) the sampled images in [0, 1]. Returns (total, unweighted terms)."""
        w = self.weights
        pred_example, pred_new = pred_example.float(), pred_new.float()
        terms: dict[str, torch.Tensor] = {"l1": (pred_example - self.sketch).abs().mean()}
        if w["lpips"]:
            to_rgb = lambda s: (s * 2 - 1).expand(-1, 3, -1, -1)  # noqa: E731
            terms["lpips"] = self.lpips(to_rgb(pred_example), to_rgb(self.sketch)).mean()
        if w["clip"]:
            terms["clip"] = _one_minus_cos(self.clip(pred_example), self.e_sketch)
        if w["across"] or w["within"]:
            e_pred, e_new = self.clip(pred_new), self.clip(new_images.float())
            terms["across"] = _one_minus_cos(e_pred - e_new, self.e_sketch - self.e_image)
            terms["within"] = _one_minus_cos(e_pred - self.e_sketch, e_new - self.e_image)
        total = sum(w[name] * value for name, value in terms.items())
        return total, terms
