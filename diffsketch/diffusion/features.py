"""Which internal features we capture, and forward hooks that capture them.

Layer specs are derived from the loaded model's config, never hard-coded, so the tiny model and
SD 1.5 go through the same code. For SD 1.5 at 512 px the UNet table is 3x1280@8, 3x1280@16,
3x640@32, 3x320@64 and the VAE decoder's is 2x512@64 (mid), 3x512@64, 3x512@128, 3x256@256,
3x128@512.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# CFG batches are [uncond; cond]; "single" is a batch without CFG, kept as its one (conditional) half.
HALVES = {"uncond": (0,), "cond": (1,), "both": (0, 1), "single": (0,)}
FLOAT16_MAX = 65504.0  # the largest finite float16


def overflow_exponents(x: torch.Tensor) -> torch.Tensor:
    """Per row (axis 0) of ``x``, the smallest ``e >= 0`` such that ``x / 2**e`` fits float16
    (int8, on ``x``'s device, without a host sync). Dividing by a power of two is exact, so a row
    stored as ``x / 2**e`` in float16 and read back times ``2**e`` keeps float16's relative
    precision at any magnitude. Rows with a NaN or an infinite value get 0 (they stay non-finite,
    for the caller's finiteness check).

    Example:
        >>> overflow_exponents(torch.tensor([[1.0, -2.0], [70000.0, 0.0], [65504.0, 1.0]])).tolist()
        [0, 1, 0]
    """
    amax = x.detach().abs().flatten(1).amax(1).float()
    e = torch.ceil(torch.log2(amax / FLOAT16_MAX)).clamp(0, 126)
    return torch.where(torch.isfinite(amax), e, torch.zeros_like(e)).to(torch.int8)


@dataclass(frozen=True)
class LayerSpec:
    name: str  # store name, e.g. "up0_res2" or "mid_res1"
    module: str  # dotted module path inside the UNet or the VAE
    channels: int
    size: int  # spatial side at the chosen resolution

    def grid(self, pool: int | str) -> int:
        return self.size if pool == "full" else int(pool)


def _per_block(value, n: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_layers(unet_config, resolution: int, vae_scale_factor: int, capture: str = "residual") -> list[LayerSpec]:
    """Every ResNet of the UNet up blocks, in forward order.

    ``capture='residual'`` hooks the residual branch (``conv2``, before the skip addition; the
    paper's ``out_layers``), ``'output'`` the ResNet's output.
    """
    channels = list(reversed(unet_config.block_out_channels))
    layers = list(reversed(_per_block(unet_config.layers_per_block, len(channels))))
    latent = resolution // vae_scale_factor
    specs = []
    for i, (ch, n) in enumerate(zip(channels, layers)):
        size = latent // 2 ** (len(channels) - 1 - i)
        for j in range(n + 1):  # every up block has layers_per_block + 1 resnets
            module = f"up_blocks.{i}.resnets.{j}" + (".conv2" if capture == "residual" else "")
            specs.append(LayerSpec(f"up{i}_res{j}", module, ch, size))
    return specs


def vae_layers(vae_config, resolution: int) -> list[LayerSpec]:
    """The VAE decoder's mid-block ResNets and every up-block ResNet, in forward order."""
    channels = list(reversed(vae_config.block_out_channels))
    latent = resolution // 2 ** (len(channels) - 1)
    specs = [LayerSpec(f"mid_res{j}", f"decoder.mid_block.resnets.{j}", channels[0], latent) for j in range(2)]
    for i, ch in enumerate(channels):
        for j in range(vae_config.layers_per_block + 1):
            specs.append(LayerSpec(f"up{i}_res{j}", f"decoder.up_blocks.{i}.resnets.{j}", ch, latent * 2**i))
    return specs


def check_pool(specs: list[LayerSpec], pool: int | str, what: str) -> None:
    if pool == "full":
        return
    too_small = [s for s in specs if s.size < int(pool)]
    if too_small:
        smallest = min(s.size for s in specs)
        raise ValueError(
            f"sample.pool={pool} is larger than {what} layer {too_small[0].name} ({too_small[0].size}x{too_small[0].size} "
            f"at this resolution); use sample.pool <= {smallest}, 'full', or a higher sample.resolution"
        )


def pool_features(x: torch.Tensor, grid: int) -> torch.Tensor:
    return x if x.shape[-1] == grid and x.shape[-2] == grid else F.adaptive_avg_pool2d(x, grid)


class Taps:
    """Persistent forward hooks on every layer a capture may read, fixed when the model is wrapped.

    Each tap keeps its layer's output (detached) in its slot, ``slots[path]``, and does nothing
    else: it reads no Python state, so a ``torch.compile``d forward traces it into its graph with
    no guard on what a capture asks for. The slots are allocated once, at installation (before
    compilation), and only their values change. Which outputs are kept, how they are pooled, the
    step selection, the CFG halves and the copy to the host are decided outside the forward, by
    :class:`FeatureCapture`: a change of capture settings does not recompile a compiled forward.
    """

    def __init__(self, root: torch.nn.Module):
        self.root = root
        self.slots: dict[str, torch.Tensor | None] = {}  # path -> the last call's output (None: emptied)
        self.active = 0  # captures open on this model; the last one to close empties the slots
        self.frozen = False  # set when the model is compiled: no new taps after that

    def install(self, paths) -> None:
        """Tap every module path in ``paths`` not tapped yet (refused once the model is compiled)."""
        for path in paths:
            if path in self.slots:
                continue
            if self.frozen:
                raise RuntimeError(
                    f"layer {path} has no feature tap and the model is compiled; taps must be installed before "
                    "torch.compile (diffsketch.diffusion.models.load_model installs every capturable layer's tap)"
                )
            self.slots[path] = None
            self.root.get_submodule(path).register_forward_hook(self._hook(self.slots, path))

    def clear(self) -> None:
        """Empty every slot (the outputs are freed; the slots stay)."""
        for path in self.slots:
            self.slots[path] = None

    @staticmethod
    def _hook(slots: dict, path: str):
        def hook(module, inputs, output):
            slots[path] = output.detach()

        return hook


def taps(root: torch.nn.Module) -> Taps:
    """The :class:`Taps` of ``root`` (created on first use)."""
    found = root.__dict__.get("_diffsketch_taps")
    if found is None:
        found = Taps(root)
        root.__dict__["_diffsketch_taps"] = found
    return found


def _collector(root: torch.nn.Module, specs: list[LayerSpec]) -> torch.nn.Module:
    """The module whose every call is one pass over ``specs``: the VAE's ``decoder`` for decoder
    layers (``vae.decode`` never calls the VAE's own forward), else ``root``."""
    heads = {s.module.split(".")[0] for s in specs}
    if len(heads) == 1:
        child = getattr(root, next(iter(heads)), None)
        if isinstance(child, torch.nn.Module) and not isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            return child
    return root


class FeatureCapture:
    """Pooled features of each listed layer (as float16), one entry per forward call of the model.

    With ``exponents``, each call's rows (trajectories) that would overflow float16 are divided by
    a power of two first (:func:`overflow_exponents`); :meth:`stacked_exponents` gives the powers
    (``{name: (B, calls)}`` int8, 0 for rows that fit), so that a store keeps them finite and
    readers multiply back. Without, a value beyond float16's range becomes infinite.

    Used as a context manager. The layers' :class:`Taps` keep their outputs inside the forward (a
    compiled forward keeps them in its graph, whatever is captured); an eager hook after each
    forward call of the module that runs them keeps the calls listed in ``keep`` (0-based: the
    denoising step indices; default all), pools them to ``pool``, splits the classifier-free guidance halves named by ``halves`` when the batch is
    ``[uncond; cond]`` (``"single"``: a batch without CFG; ``None``: no halves axis) and, with
    ``to_cpu``, copies them to the host without waiting (``non_blocking`` into pinned memory on
    CUDA; :meth:`stacked` waits once). After a run, ``stacked()`` gives ``{name: (B, calls, halves,
    C, g, g)}``, or ``{name: (B, calls, C, g, g)}`` with ``halves=None``.
    """

    def __init__(
        self,
        root: torch.nn.Module,
        specs: list[LayerSpec],
        pool: int | str,
        halves: str | None = None,
        keep: list[int] | None = None,
        to_cpu: bool = False,
        exponents: bool = False,
    ):
        self.root, self.specs, self.pool, self.halves = root, specs, pool, halves
        self.exponents = exponents
        self.exponent_buffers: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.keep = None if keep is None else set(keep)
        self.to_cpu = to_cpu
        self.buffers: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.calls = 0
        self.enabled = True
        self._pending_copies = False
        self._handles = []
        self._entered = False
        self._taps = taps(root)

    def _collect(self, module, inputs, output) -> None:
        call = self.calls
        self.calls += 1
        if not self.enabled or (self.keep is not None and call not in self.keep):
            return
        slots = self._taps.slots
        for spec in self.specs:
            x = pool_features(slots[spec.module], spec.grid(self.pool))
            if self.halves is not None:
                parts = x.chunk(2) if self.halves != "single" else (x,)
                x = torch.stack([parts[h] for h in HALVES[self.halves]], dim=1)
            if self.exponents:  # one power of two per trajectory (both halves), exact in any float dtype
                e = overflow_exponents(x)
                x = torch.ldexp(x, -e.to(x.dtype).view(-1, *[1] * (x.dim() - 1)))
                self.exponent_buffers[spec.name].append(e)
            x = x.to(torch.float16)
            if self.to_cpu and x.device.type != "cpu":
                host = torch.empty(x.shape, dtype=x.dtype, pin_memory=x.is_cuda)
                host.copy_(x, non_blocking=True)
                self._pending_copies = True
                x = host
            self.buffers[spec.name].append(x)

    def __enter__(self) -> FeatureCapture:
        if not self.specs:
            return self
        self._taps.install([s.module for s in self.specs])
        self._taps.active += 1
        self._handles.append(_collector(self.root, self.specs).register_forward_hook(self._collect))
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._entered:
            self._taps.active -= 1
            if not self._taps.active:
                self._taps.clear()  # the last capture frees the layers' outputs
        self._entered = False

    def stacked(self) -> dict[str, torch.Tensor]:
        if self._pending_copies and torch.cuda.is_available():
            torch.cuda.synchronize(next(self.root.parameters()).device)  # the model's non-blocking copies have landed
            self._pending_copies = False
        return {name: torch.stack(buf, dim=1) for name, buf in self.buffers.items()}

    def stacked_exponents(self) -> dict[str, torch.Tensor]:
        """``{name: (B, calls)}`` int8 on the CPU: the power of two each stored row was divided by
        (see :func:`overflow_exponents`); empty without ``exponents``."""
        return {name: torch.stack(buf, dim=1).cpu() for name, buf in self.exponent_buffers.items()}

