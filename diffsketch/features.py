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


class FeatureCapture:
    """Forward hooks that pool each listed layer's output and keep it (as float16, on its device).

    Used as a context manager; hooks are removed on exit. ``halves`` names the classifier-free
    guidance halves to keep when the batch is ``[uncond; cond]`` (``"single"``: a batch without
    CFG; ``None``: no halves axis). ``keep`` lists the forward calls (0-based: the denoising step
    indices) to keep; the default keeps every call. After a run, ``stacked()`` gives ``{name: (B,
    calls, halves, C, g, g)}``, or ``{name: (B, calls, C, g, g)}`` with ``halves=None``.
    """

    def __init__(
        self,
        root: torch.nn.Module,
        specs: list[LayerSpec],
        pool: int | str,
        halves: str | None = None,
        keep: list[int] | None = None,
    ):
        self.root, self.specs, self.pool, self.halves = root, specs, pool, halves
        self.keep = None if keep is None else set(keep)
        self.buffers: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)
        self.enabled = True
        self._handles = []

    def _hook(self, spec: LayerSpec):
        grid = spec.grid(self.pool)

        def hook(module, inputs, output):
            call = self.calls[spec.name]
            self.calls[spec.name] += 1
            if not self.enabled or (self.keep is not None and call not in self.keep):
                return
            x = pool_features(output.detach(), grid).to(torch.float16)
            if self.halves is not None:
                parts = x.chunk(2) if self.halves != "single" else (x,)
                x = torch.stack([parts[h] for h in HALVES[self.halves]], dim=1)
            self.buffers[spec.name].append(x)

        return hook

    def __enter__(self) -> FeatureCapture:
        for spec in self.specs:
            module = self.root.get_submodule(spec.module)
            self._handles.append(module.register_forward_hook(self._hook(spec)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def stacked(self) -> dict[str, torch.Tensor]:
        return {name: torch.stack(buf, dim=1) for name, buf in self.buffers.items()}
