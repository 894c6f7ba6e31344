"""The DiffSketch sketch generator: Stable Diffusion features of one image -> a sketch of it.

This follows DiffSketch (arXiv 2401.04362) as the paper describes it. Three parts:

1. **Two aggregators over UNet features** (Diffusion-Hyperfeatures style). Each aggregator owns one
   bottleneck block per UNet layer, shared by all its *slots* (the representative timesteps), and
   one learnable scalar per (slot, layer). The scalars go through one softmax over all slots and
   layers together, and the output is the weighted sum of the bottlenecked features, each first
   resized bilinearly to the aggregator's output size.

   - The *lower* aggregator reads every UNet up block except the last one and works at the size
     of the second-to-last block (32 for SD 1.5 at 512 px).
   - The *higher* aggregator reads the last up block at the latent size (64). Its slot 0 is the
     lower aggregator's output, upsampled and split into one chunk per higher layer, so each chunk
     goes through that layer's shared bottleneck; slots 1..T are the timesteps.

   The authors' code gave the higher aggregator only T slots, so the lower aggregator's output was
   dropped and its parameters never trained. Here slot 0 always carries it.

2. **Both classifier-free-guidance halves** go through the aggregators as one batch of 2B; the
   result is rearranged to (B, 2P, H, W), the uncond half's P channels first, then the cond half's.

3. **A fusion decoder** that climbs the VAE decoder's resolutions. Every VAE feature is reduced by
   a 1x1 conv and a :class:`ConvBlock` (registered modules, so they train; the authors kept them in
   plain Python lists), concatenated with the running tensor, and a :class:`Fusion` step doubles the
   resolution. At the image size the decoded RGB image joins in and a head maps to one channel.

The output goes through a sigmoid, so the sketch is in [0, 1] (1 = white paper, 0 = black line),
like the training targets. The authors had no output activation and only clamped when saving,
which leaves the training output unbounded; a sigmoid bounds it and keeps gradients everywhere.

**Ablations** (``train.vae_fusion``, ``train.aggregation``; the paper's "w/o VAE features" and
one-level rows): with ``vae_fusion=False`` the fusion decoder climbs the same resolutions with the
same widths but reads nothing the VAE decoder produced: no VAE feature (its ``reduce`` modules do not
exist) and no decoded RGB image, which is the VAE decoder's output. Its head reads the last fusion
step's channels alone (64 for SD 1.5, the authors' ``use_VAE=False`` branch:
``Conv_block(64, 64)``); with ``aggregation="one"`` there is no lower aggregator and one
aggregator with T slots reads every UNet up-block layer, resized to the latent size, with the
higher aggregator's width. Both are recorded in the config, so a saved generator rebuilds as trained.

Every width is derived from the layer specs (:mod:`diffsketch.diffusion.features`) and the number of
timesteps, so the tiny test model and SD 1.5 run the same code. For SD 1.5 at 512 px with 13
timesteps the lower aggregator has P = 3 x 320 = 960 (18,302,517 parameters), the higher one
P = 384 and 3 x 14 mixing weights, and the fusion decoder's input widths are 848, 304, 152, 91
(768, 256, 128, 64 with ``vae_fusion=False``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.core import DiffsketchError
from diffsketch.diffusion import LayerSpec

WEIGHTS_NAME = "generator.safetensors"
FORMAT = "diffsketch-generator"
FORMAT_VERSION = 1
AGGREGATIONS = ("two", "one")


class GeneratorLoadError(DiffsketchError, RuntimeError):
    """A saved generator could not be loaded (missing, corrupt or mismatched files)."""


# ---------------------------------------------------------------------------------------------
# Inputs and config
# ---------------------------------------------------------------------------------------------


@dataclass
class GeneratorInputs:
    """What the generator reads for a batch of B images.

    - ``unet``: layer name -> (B, T, 2, C, H, W): the T representative timesteps in denoising order
      (decreasing t), both CFG halves (0 = uncond, 1 = cond), full resolution.
    - ``vae``: layer name -> (B, C, H, W): VAE decoder features, full resolution.
    - ``rgb``: (B, 3, H, W): the decoded image in [-1, 1].
    """

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    rgb: torch.Tensor

    @property
    def batch(self) -> int:
        return self.rgb.shape[0]

    def to(self, device=None, dtype: torch.dtype | None = None) -> GeneratorInputs:
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype)

        return GeneratorInputs(
            unet={k: move(v) for k, v in self.unet.items()},
            vae={k: move(v) for k, v in self.vae.items()},
            rgb=move(self.rgb),
        )


def _spec_from_dict(d: dict) -> LayerSpec:
    return LayerSpec(name=str(d["name"]), module=str(d["module"]), channels=int(d["channels"]), size=int(d["size"]))


@dataclass
class GeneratorConfig:
    """Everything needed to rebuild a :class:`SketchGenerator`: layer specs (as dicts) and T."""

    unet_specs: list[dict]
    vae_specs: list[dict]
    timesteps: int
    vae_fusion: bool = True
    aggregation: str = "two"

    @classmethod
    def from_specs(cls, unet_specs: list[LayerSpec], vae_specs: list[LayerSpec], timesteps: int,
                   vae_fusion: bool = True, aggregation: str = "two") -> GeneratorConfig:
        return cls([asdict(s) for s in unet_specs], [asdict(s) for s in vae_specs], int(timesteps), bool(vae_fusion),
                   str(aggregation))

    def unet_layer_specs(self) -> list[LayerSpec]:
        return [_spec_from_dict(d) for d in self.unet_specs]

    def vae_layer_specs(self) -> list[LayerSpec]:
        return [_spec_from_dict(d) for d in self.vae_specs]

    def to_dict(self) -> dict:
        return {"unet_specs": [dict(d) for d in self.unet_specs], "vae_specs": [dict(d) for d in self.vae_specs],
                "timesteps": self.timesteps, "vae_fusion": self.vae_fusion, "aggregation": self.aggregation}

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        """Rebuild from :meth:`to_dict`'s output; raises ``ValueError`` on a malformed dict."""
        try:
            cfg = cls([dict(s) for s in d["unet_specs"]], [dict(s) for s in d["vae_specs"]], int(d["timesteps"]),
                      bool(d.get("vae_fusion", True)), str(d.get("aggregation", "two")))  # older files: the full method
            cfg.unet_layer_specs(), cfg.vae_layer_specs()  # every spec must parse
            if cfg.aggregation not in AGGREGATIONS:
                raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {cfg.aggregation!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed generator config: {type(e).__name__}: {e}") from e
        return cfg


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _groups(channels: int, preferred: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is <= ``preferred``."""
    for g in range(min(preferred, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def _norm(channels: int, preferred: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels, preferred), channels)


class Bottleneck(nn.Module):
    """A ResNet bottleneck (detectron2 / Diffusion-Hyperfeatures style).

    1x1 in -> P/4, 3x3 P/4 -> P/4, 1x1 P/4 -> P; each conv is bias-free and followed by GroupNorm,
    with ReLU after the first two norms and after the residual sum. The shortcut is a 1x1 conv +
    GroupNorm when the widths differ, the identity otherwise. Convs use Kaiming (fan_out) init.
    """

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, norm_groups: int):
        super().__init__()
        mid = bottleneck_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm1 = _norm(mid, norm_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.norm2 = _norm(mid, norm_groups)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.norm3 = _norm(out_channels, norm_groups)
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels, norm_groups)
            )
        else:
            self.shortcut = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        h = self.norm3(self.conv3(h))
        return F.relu(h + self.shortcut(x))


class ConvBlock(nn.Sequential):
    """3x3 conv (no bias) -> GroupNorm -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 4):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), _norm(out_channels, norm_groups), nn.GELU()
        )


class Fusion(nn.Sequential):
    """Nearest upsample x2 -> 3x3 conv (no bias) -> GroupNorm -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int = 16):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels, norm_groups),
            nn.GELU(),
        )


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Aggregator(nn.Module):
    """Softmax-weighted sum of per-layer bottlenecks over (slot, layer) pairs.

    One :class:`Bottleneck` per layer, shared by every slot; one mixing scalar per (slot, layer),
    initialised equal, normalised by a single softmax over all of them. Each input is resized
    bilinearly to ``size`` before its bottleneck.
    """

    def __init__(self, in_channels: list[int], slots: int, out_channels: int, size: int, norm_groups: int):
        super().__init__()
        self.in_channels = list(in_channels)
        self.slots = slots
        self.out_channels = out_channels
        self.size = size
        self.bottlenecks = nn.ModuleList(
            Bottleneck(c, out_channels, max(out_channels // 4, 1), norm_groups) for c in self.in_channels
        )
        self.mixing = nn.Parameter(torch.ones(slots, len(self.in_channels)))

    def mixing_weights(self) -> torch.Tensor:
        """(slots, layers) softmax over every slot and layer jointly."""
        return torch.softmax(self.mixing.flatten(), dim=0).view_as(self.mixing)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features[l]``: (slots, N, C_l, h, w) for layer l -> (N, P, size, size)."""
        if len(features) != len(self.bottlenecks):
            raise ValueError(f"aggregator expects {len(self.bottlenecks)} layers, got {len(features)}")
        weights = self.mixing_weights()
        out = None
        for layer, (x, bottleneck) in enumerate(zip(features, self.bottlenecks)):
            slots, n = x.shape[:2]
            if slots != self.slots:
                raise ValueError(f"aggregator expects {self.slots} slots, got {slots} for layer {layer}")
            y = bottleneck(_resize(x.flatten(0, 1), self.size))  # every slot of this layer in one batch
            y = y.view(slots, n, *y.shape[1:])
            term = (weights[:, layer].view(slots, 1, 1, 1, 1).to(y.dtype) * y).sum(0)
            out = term if out is None else out + term
        return out


def _higher_width(channels: int) -> int:
    """1.2 x the higher UNet width, rounded to a multiple of 8 (384 for SD 1.5's 320)."""
    return max(8, 8 * round(1.2 * channels / 8))


def _split_levels(specs: list[LayerSpec], key) -> list[list[LayerSpec]]:
    """Group specs by ``key`` (kept in order of first appearance)."""
    groups: dict = {}
    for s in specs:
        groups.setdefault(key(s), []).append(s)
    return list(groups.values())


class FusionDecoder(nn.Module):
    """Climbs the VAE decoder's resolutions from the latent size to the image size.

    The VAE specs are grouped by size (ascending); each level's features are reduced (1x1 conv
    with bias to r = max(C // 32, 8), then ``ConvBlock(r, r)``) and concatenated with the running
    tensor. Between levels a :class:`Fusion` doubles the resolution and outputs half the VAE width
    of the level it goes to. At the last level the RGB image is concatenated too, and a
    ``ConvBlock`` (to half that level's VAE width) and a 1x1 conv give one channel.

    With ``use_vae=False`` nothing from the VAE decoder is read: no reduced features at any level
    and no RGB image (the decoded image is the VAE decoder's output), so the head's input is the
    last fusion step's output alone. The VAE specs still give the sizes and widths.
    """

    def __init__(self, in_channels: int, vae_specs: list[LayerSpec], use_vae: bool = True):
        super().__init__()
        self.use_vae = bool(use_vae)
        self.levels = [[s.name for s in lvl] for lvl in sorted(_split_levels(vae_specs, lambda s: s.size),
                                                                 key=lambda lvl: lvl[0].size)]
        by_name = {s.name: s for s in vae_specs}
        if len(by_name) != len(vae_specs):
            raise ValueError("VAE layer names must be unique")
        sizes = [by_name[lvl[0]].size for lvl in self.levels]
        for a, b in zip(sizes, sizes[1:]):
            if b != 2 * a:
                raise ValueError(f"VAE feature sizes must double from level to level, got {sizes}")
        self.sizes = sizes
        widths = [max(by_name[n].channels for n in lvl) for lvl in self.levels]

        self.reduce = nn.ModuleDict()
        for s in vae_specs if self.use_vae else []:
            r = max(s.channels // 32, 8)
            self.reduce[s.name] = nn.Sequential(nn.Conv2d(s.channels, r, 1), ConvBlock(r, r))
        reduced = [sum(max(by_name[n].channels // 32, 8) for n in lvl) if self.use_vae else 0 for lvl in self.levels]

        self.in_channels: list[int] = []
        self.fuse = nn.ModuleList()
        x_channels = in_channels
        for level in range(len(self.levels) - 1):
            cin, cout = x_channels + reduced[level], widths[level + 1] // 2
            self.fuse.append(Fusion(cin, cout))
            self.in_channels.append(cin)
            x_channels = cout
        head_in, head_mid = x_channels + (reduced[-1] + 3 if self.use_vae else 0), widths[-1] // 2
        self.in_channels.append(head_in)
        self.head = nn.Sequential(ConvBlock(head_in, head_mid), nn.Conv2d(head_mid, 1, 1))

    def _reduced(self, level: int, vae: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if not self.use_vae:
            return []
        return [self.reduce[name](vae[name]) for name in self.levels[level]]

    def forward(self, x: torch.Tensor, vae: dict[str, torch.Tensor], rgb: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, s0, s0) at the latent size -> logits (B, 1, H, W).

        ``vae`` and ``rgb`` are read only with ``use_vae``; without it they may be anything (or empty).
        """
        for level, fuse in enumerate(self.fuse):
            x = fuse(torch.cat([x, *self._reduced(level, vae)], dim=1))
        if not self.use_vae:
            return self.head(x)
        return self.head(torch.cat([x, *self._reduced(len(self.levels) - 1, vae), rgb], dim=1))


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------


class SketchGenerator(nn.Module):
    """UNet features (T timesteps, both CFG halves) + VAE features + RGB -> a sketch in [0, 1].

    Args:
        unet_specs: the UNet up-block ResNet specs in forward order (:func:`~diffsketch.diffusion.features.unet_layers`).
        vae_specs: the VAE decoder specs (:func:`~diffsketch.diffusion.features.vae_layers`).
        timesteps: T, the number of representative timesteps.
        vae_fusion: False = the decoder reads nothing from the VAE decoder: no VAE features and no
            decoded RGB image (ablation; ``inputs.rgb`` is then only checked for its shape).
        aggregation: "two" (lower + higher aggregators) or "one" (a single aggregator over every layer; ablation).

    See the module docstring for the design.
    """

    def __init__(self, unet_specs: list[LayerSpec], vae_specs: list[LayerSpec], timesteps: int, *,
                 vae_fusion: bool = True, aggregation: str = "two"):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.config = GeneratorConfig.from_specs(unet_specs, vae_specs, timesteps, vae_fusion, aggregation)
        self.timesteps = int(timesteps)

        blocks = _split_levels(unet_specs, lambda s: s.name.split("_")[0])  # up block "up{i}"
        if len(blocks) < 2:
            raise ValueError(f"need at least two UNet up blocks, got {len(blocks)}")
        lower, higher = [s for b in blocks[:-1] for s in b], blocks[-1]
        self.lower_names = [s.name for s in lower]
        self.higher_names = [s.name for s in higher]
        lower_size, higher_size = blocks[-2][0].size, higher[0].size
        if higher_size != 2 * lower_size:
            raise ValueError(f"the last UNet up block ({higher_size}) must be twice the size of the one before "
                             f"({lower_size})")
        self.higher_widths = [s.channels for s in higher]

        if aggregation == "two":
            # Lower: T slots, P = the sum of the higher widths so it splits into one chunk per higher layer.
            self.lower = Aggregator([s.channels for s in lower], timesteps, sum(self.higher_widths), lower_size, 16)
            # Higher: slot 0 = the lower output, slots 1..T = the timesteps.
            self.higher = Aggregator(self.higher_widths, timesteps + 1, _higher_width(max(self.higher_widths)),
                                     higher_size, 32)
        else:  # one level: no lower aggregator; one aggregator, T slots, over every layer at the latent size
            self.lower = None
            self.higher = Aggregator([s.channels for s in lower + higher], timesteps,
                                     _higher_width(max(self.higher_widths)), higher_size, 32)
        self.concat_channels = 2 * self.higher.out_channels  # uncond + cond

        self.decoder = FusionDecoder(self.concat_channels, vae_specs, use_vae=vae_fusion)
        if self.decoder.sizes[0] != higher_size:
            raise ValueError(f"the smallest VAE feature size ({self.decoder.sizes[0]}) must equal the last UNet up "
                             f"block's size ({higher_size}): specs built for different resolutions?")

    @classmethod
    def from_config(cls, config: GeneratorConfig | dict) -> SketchGenerator:
        if isinstance(config, dict):
            config = GeneratorConfig.from_dict(config)
        return cls(config.unet_layer_specs(), config.vae_layer_specs(), config.timesteps,
                   vae_fusion=config.vae_fusion, aggregation=config.aggregation)

    def fusion_in_channels(self) -> list[int]:
        """Input widths of each fusion step and of the final head ([848, 304, 152, 91] for SD 1.5)."""
        return list(self.decoder.in_channels)

    def _unet_slots(self, unet: dict[str, torch.Tensor], names: list[str]) -> list[torch.Tensor]:
        """(B, T, 2, C, H, W) per layer -> (T, 2B, C, H, W), batch order (b0 uncond, b0 cond, b1 ...)."""
        out = []
        for name in names:
            x = unet[name]
            if x.ndim != 6 or x.shape[1] != self.timesteps or x.shape[2] != 2:
                raise ValueError(f"unet feature {name!r} must be (B, T={self.timesteps}, 2, C, H, W), "
                                 f"got {tuple(x.shape)}")
            out.append(x.transpose(0, 1).flatten(1, 2))
        return out

    def aggregate(self, unet: dict[str, torch.Tensor]) -> torch.Tensor:
        """UNet features -> (B, 2P, H, W) at the latent size, the uncond half's P channels first."""
        missing = [n for n in self.lower_names + self.higher_names if n not in unet]
        if missing:
            raise ValueError(f"missing unet features: {missing}")
        if self.lower is None:  # one level
            high = self.higher(self._unet_slots(unet, self.lower_names + self.higher_names))
            b2, p, h, w = high.shape
            return high.reshape(b2 // 2, 2 * p, h, w)
        low = self.lower(self._unet_slots(unet, self.lower_names))  # (2B, sum(higher widths), h, w)
        low = _resize(low, self.higher.size)
        chunks = torch.split(low, self.higher_widths, dim=1)  # one per higher layer
        timesteps = self._unet_slots(unet, self.higher_names)
        high = self.higher([torch.cat([c.unsqueeze(0), t], dim=0) for c, t in zip(chunks, timesteps)])
        b2, p, h, w = high.shape
        return high.reshape(b2 // 2, 2 * p, h, w)  # (B, 2, P) -> (B, 2P): uncond then cond

    def forward(self, inputs: GeneratorInputs) -> torch.Tensor:
        """-> (B, 1, H, W) sketch in [0, 1]."""
        param = next(self.parameters())
        inputs = inputs.to(param.device, param.dtype)
        missing = [n for lvl in self.decoder.levels for n in lvl if n not in inputs.vae] if self.decoder.use_vae else []
        if missing:
            raise ValueError(f"missing vae features: {missing}")
        size = self.decoder.sizes[-1]
        if inputs.rgb.shape[1:] != (3, size, size):
            raise ValueError(f"rgb must be (B, 3, {size}, {size}), got {tuple(inputs.rgb.shape)}")
        x = self.aggregate(inputs.unet)
        return torch.sigmoid(self.decoder(x, inputs.vae, inputs.rgb))


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------


def _weights_path(path: Path) -> Path:
    path = Path(path)
    return path / WEIGHTS_NAME if path.is_dir() else path


def save_generator(gen: SketchGenerator, weights_path: Path, meta: dict | None = None) -> None:
    """Write the weights (safetensors) to ``weights_path`` and config + ``meta`` next to it as ``.json``.

    ``weights_path`` may also be an existing folder: the files are then ``generator.safetensors``
    and ``generator.json`` in it.
    """
    from safetensors.torch import save_file

    weights_path = _weights_path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in gen.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "config": gen.config.to_dict(), "meta": meta or {}}
    weights_path.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")


def load_generator(weights_path: Path, device="cpu") -> tuple[SketchGenerator, dict]:
    """Rebuild a generator saved by :func:`save_generator`; returns ``(generator, meta)``.

    Raises :class:`GeneratorLoadError` naming the file when either file is missing, unreadable, or
    the weights do not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = _weights_path(weights_path)
    json_path = weights_path.with_suffix(".json")
    for p in (json_path, weights_path):
        if not p.is_file():
            raise GeneratorLoadError(f"{p}: file not found")
    try:
        doc = json.loads(json_path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        gen = SketchGenerator.from_config(GeneratorConfig.from_dict(doc["config"]))
    except (OSError, KeyError, TypeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise GeneratorLoadError(f"{json_path}: cannot read the generator config: {e}") from e
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise GeneratorLoadError(f"{weights_path}: cannot read the weights: {e}") from e
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GeneratorLoadError(f"{weights_path}: weights do not match {json_path.name}: {e}") from e
    return gen.to(device), dict(doc.get("meta") or {})


def parameter_counts(gen: SketchGenerator) -> dict[str, int]:
    """Trainable parameters per part: lower, higher, fusion (the decoder) and total."""

    def count(m: nn.Module | None) -> int:
        return 0 if m is None else sum(p.numel() for p in m.parameters())

    return {"lower": count(gen.lower), "higher": count(gen.higher), "fusion": count(gen.decoder), "total": count(gen)}
