"""Sketching a photo at its own resolution by overlapping tiles, equal to the whole-image pass.

The student (:mod:`diffsketch.student.network`) normalises every convolution's output by
*instance normalisation*: each channel minus its mean over the whole image, divided by its
standard deviation over the whole image. A tile sees only its own pixels, so sketching tiles
independently changes every normalisation (the seams show). Here the statistics come from the
whole image and the convolutions from the tiles:

- every instance norm is replaced by a :class:`TileNorm` that applies *given* per-channel means
  and variances;
- the norms' statistics are found one after another, in the network's order: a pass over the
  tiles runs the network up to the first norm whose statistics are still unknown, adds that
  activation's per-channel sums and sums of squares over the tile's own pixels (float64), and
  stops there; the next pass knows one more norm;
- a tile is read with a margin (the *halo*) at least the network's receptive radius, so its own
  pixels see exactly the neighbourhood the whole-image pass sees; tile corners and halos are
  multiples of the network's total stride (``2 ** downsamples``), so the strided grids line up;
- between passes, the activation at the input of a top-level layer is kept for the whole image
  when it takes at most half of ``keep_bytes`` (the deep, low-resolution ones do), and later
  passes start from it instead of from the photo: at 24 MP with the default student (384 MB at
  1/8 of the resolution) the photo is run through the encoder four times and the rest about twice.

The result equals the whole-image pass up to float rounding (1e-5 in fp32; in bf16 the two
orders of summation differ by bf16 rounding, a mean of 1e-3 on random weights), while memory holds one tile's
activations, the photo (as 8-bit when it was), the sketch, and at most ``keep_bytes`` of kept
activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TILE = 512  # tile side in pixels (its own pixels; the halo comes on top)
KEEP_BYTES = 768 * 2**20  # whole-image activations kept between passes, at most (one is at most half of it)


class _Stop(Exception):
    """Raised by the norm whose statistics a pass gathers: the rest of the network is not needed."""


@dataclass
class _Window:
    """The tile's own pixels inside the region the network sees, in input pixels."""

    top: int = 0
    left: int = 0
    height: int = 0
    width: int = 0
    region: tuple[int, int] = (0, 0)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, h, w) at any of the network's scales, cut to the tile's own pixels."""
        scale = self.region[0] // x.shape[-2]
        assert scale * x.shape[-2] == self.region[0] and scale * x.shape[-1] == self.region[1], "tile not aligned"
        t, l = self.top // scale, self.left // scale
        return x[..., t : t + self.height // scale, l : l + self.width // scale]


@dataclass
class _Sums:
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count: int = 0

    def add(self, x: torch.Tensor) -> None:
        values = x.double()
        total, squares = values.sum(dim=(0, 2, 3)), (values * values).sum(dim=(0, 2, 3))
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += values.shape[0] * values.shape[2] * values.shape[3]


class TileNorm(nn.Module):
    """An instance norm whose per-channel mean and variance are given (whole-image statistics).

    Modes: statistics known (``mean`` set): normalise with them; ``gather`` set: add this tile's
    sums and stop the pass; neither: an ordinary instance norm (for the shape probe).
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        self.mean: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.gather: _Sums | None = None
        self.window: _Window | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            if self.gather is not None:
                self.gather.add(self.window.crop(x))
                raise _Stop
            values = x.float()
            mean = values.mean(dim=(2, 3), keepdim=True)
            var = values.var(dim=(2, 3), keepdim=True, unbiased=False)
            out = (values - mean) / torch.sqrt(var + self.eps)
            return (out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)
        shape = (1, -1, 1, 1)
        out = x.float() - self.mean.view(shape)  # one new tensor; the rest in place
        return out.mul_(self.scale.view(shape)).add_(self.bias.view(shape)).to(x.dtype)

    def settle(self) -> None:
        """Take the gathered sums as this norm's statistics."""
        sums = self.gather
        mean = sums.total / sums.count
        var = (sums.squares / sums.count - mean * mean).clamp_min(0.0)
        self.mean = mean.float().to(self.weight.device)
        self.scale = (self.weight.double() / torch.sqrt(var.to(self.weight.device) + self.eps)).float()
        self.gather = None


def unit_float(image: torch.Tensor) -> torch.Tensor:
    """A uint8 image as float32 in [0, 1] (divided in float64, so each value is the float32 nearest
    to ``v / 255``, as NumPy's float32 division of the decoded file gives); a float image as float32.

    >>> unit_float(torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    if image.dtype == torch.uint8:
        return (image.double() / 255.0).float()
    return image.float()


def is_instance_norm(module: nn.Module) -> bool:
    """True for the per-channel normalisations the student uses (``InstanceNorm2d`` or its group-norm form)."""
    return isinstance(module, nn.InstanceNorm2d) or type(module).__name__ == "_GroupInstanceNorm"


def _swap(module: nn.Module, found: list[TileNorm]) -> None:
    for name, child in module.named_children():
        if is_instance_norm(child):
            norm = TileNorm(child)
            setattr(module, name, norm)
            found.append(norm)
        else:
            _swap(child, found)


def receptive_radius(downsamples: int, blocks: int) -> int:
    """How far (pixels) an output pixel of the student sees into its input, each way.

    The 7x7 stem and head see 3 pixels; each stride-2 convolution and each transposed one adds one
    pixel at its coarser scale; each residual block's two 3x3 convolutions add one each at the
    lowest scale (``2 ** downsamples`` pixels).

    >>> receptive_radius(3, 4)
    91
    """
    jumps = 2**downsamples - 1  # 1 + 2 + ... + 2 ** (downsamples - 1)
    return 3 + jumps + 2 * blocks * 2**downsamples + 2 * jumps + 3


def halo_for(downsamples: int, blocks: int) -> int:
    """The margin read around each tile: the receptive radius rounded up to the total stride.

    >>> halo_for(3, 4)
    96
    """
    multiple = 2**downsamples
    return math.ceil(receptive_radius(downsamples, blocks) / multiple) * multiple


@dataclass
class _Kept:
    """A whole-image activation at the input of top-level layer ``start`` (None: the photo itself)."""

    start: int
    tensor: torch.Tensor | None = None
    scale: int = 1

    @property
    def nbytes(self) -> int:
        return 0 if self.tensor is None else self.tensor.numel() * self.tensor.element_size()


@dataclass
class TiledStudent:
    """A student network prepared for tiled whole-image-statistics inference (see the module docstring).

    Build it with :meth:`build` from the (inference-ready) student; call it on one image.
    """

    net: nn.Sequential
    norms: list[TileNorm]
    owner: list[int]  # the top-level layer index holding each norm
    multiple: int
    halo: int
    device: torch.device
    keep_bytes: int = KEEP_BYTES
    window: _Window = field(default_factory=_Window)

    @classmethod
    def build(cls, student: nn.Module, device: torch.device | str = "cpu", keep_bytes: int = KEEP_BYTES) -> TiledStudent:
        """From a :class:`~diffsketch.student.network.Student` (or its inference copy): its norms swapped, its ``net`` kept."""
        import copy

        net = copy.deepcopy(student.net).eval().requires_grad_(False)
        norms: list[TileNorm] = []
        owner: list[int] = []
        for index, layer in enumerate(net):
            before = len(norms)
            if is_instance_norm(layer):
                net[index] = TileNorm(layer)
                norms.append(net[index])
            else:
                _swap(layer, norms)
            owner += [index] * (len(norms) - before)
        config = student.config
        tiled = cls(net, norms, owner, config.multiple, halo_for(config.downsamples, config.blocks), torch.device(device), keep_bytes)
        for norm in norms:
            norm.window = tiled.window
        return tiled

    def _shapes(self) -> list[tuple[int, int, torch.dtype]]:
        """(channels, scale, dtype) at the input of every top-level layer, from a small probe."""
        side = 4 * self.multiple
        x = torch.zeros(1, 3, side, side, device=self.device)
        shapes = []
        with torch.inference_mode():
            for layer in self.net:
                shapes.append((x.shape[1], side // x.shape[-2], x.dtype))
                x = layer(x)
        return shapes

    def __call__(self, image: torch.Tensor, tile: int = DEFAULT_TILE) -> np.ndarray:
        """One image, (3, H, W) uint8 or float in [0, 1], -> its (H, W) float32 sketch, tile by tile.

        Args:
            image: the photo; an 8-bit tensor is converted tile by tile (no full-size float copy).
            tile: the side of a tile's own pixels (rounded up to the total stride).
        """
        height, width = image.shape[-2:]
        m = self.multiple
        pad_h, pad_w = -height % m, -width % m
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        full = (height + pad_h, width + pad_w)
        tile = max(m, math.ceil(tile / m) * m)
        grid = [(y, x) for y in range(0, full[0], tile) for x in range(0, full[1], tile)]
        for norm in self.norms:
            norm.mean = norm.scale = norm.gather = None
        shapes = self._shapes()
        out = np.empty((height, width), dtype=np.float32)

        def photo(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            crop = image[None, :, y0 : min(y1, height), x0 : min(x1, width)].to(self.device)
            values = unit_float(crop)
            values = values * 2 - 1
            if y1 > height or x1 > width:  # the bottom / right padding, as Student.forward pads the whole image
                values = F.pad(values, (0, max(0, x1 - width), 0, max(0, y1 - height)), mode=mode)
            return values

        source = _Kept(0)
        for k in range(len(self.norms) + 1):
            final = k == len(self.norms)
            if not final:
                self.norms[k].gather = _Sums()
            record = None
            if not final and self.owner[k] > source.start:
                channels, scale, dtype = shapes[self.owner[k]]
                need = channels * (full[0] // scale) * (full[1] // scale) * torch.empty(0, dtype=dtype).element_size()
                if 2 * need <= self.keep_bytes and need + source.nbytes <= self.keep_bytes:
                    kept = torch.empty(1, channels, full[0] // scale, full[1] // scale, dtype=dtype, device=self.device)
                    record = _Kept(self.owner[k], kept, scale)
            for y, x in grid:
                ty, tx = min(tile, full[0] - y), min(tile, full[1] - x)
                y0, x0 = max(0, y - self.halo), max(0, x - self.halo)
                y1, x1 = min(full[0], y + ty + self.halo), min(full[1], x + tx + self.halo)
                self.window.top, self.window.left, self.window.height, self.window.width = y - y0, x - x0, ty, tx
                self.window.region = (y1 - y0, x1 - x0)
                if source.tensor is None:
                    h = photo(y0, y1, x0, x1)
                else:
                    s = source.scale
                    h = source.tensor[..., y0 // s : y1 // s, x0 // s : x1 // s]
                with torch.inference_mode():
                    try:
                        for index in range(source.start, len(self.net)):
                            if record is not None and index == record.start:
                                s = record.scale
                                record.tensor[..., y // s : (y + ty) // s, x // s : (x + tx) // s] = self.window.crop(h)
                            h = self.net[index](h)
                    except _Stop:
                        continue
                core = self.window.crop(torch.sigmoid(h))[0, 0].float().cpu().numpy()
                out[y : min(y + ty, height), x : min(x + tx, width)] = core[: min(ty, height - y), : min(tx, width - x)]
            if not final:
                self.norms[k].settle()
            if record is not None:
                source = record
        return out
