"""The one (image, sketch) example the generator learns a style from.

The source image is either generated (``example.prompt`` and ``example.seed``, with the sampling
settings of ``sample``) or a real photo (``example.image``) brought in by DDIM inversion: its latent
is inverted with the prompt at guidance 1 and regenerated from the inverted noise, running the
``[uncond; cond]`` batch at guidance 1 so both halves' features exist. Either way the UNet
features at the representative timesteps and the VAE decoder features come from that trajectory.

The target sketch is either a drawing (``example.sketch`` is a file path: any mode or size,
converted to one channel and aligned to the source) or a built-in style applied to the source
image (``xdog``, ``canny``, ``dog``; ``hed`` and ``anime`` with ``example.style_weights``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffsketch.core import DiffsketchError, Params, images
from diffsketch.diffusion import (
    Capture,
    SampleResult,
    SDModel,
    clip_tokenizer,
    encode_image,
    encode_prompts,
    initial_noise,
    invert,
    sample_conditions,
)
from diffsketch.training import styles
from diffsketch.training.generator import GeneratorInputs


class ExampleError(DiffsketchError, ValueError):
    """The example is unusable; the message names the param or file and the fix."""


@dataclass
class Example:
    prompt: str
    cond: torch.Tensor  # (1, 77, D) the prompt's text embedding: the CDST pivot
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]: the source image (the photo, or the generated image)
    sketch: torch.Tensor  # (1, 1, H, W) in [0, 1]: the target sketch (1 = paper)
    inputs: GeneratorInputs  # features of the source trajectory at the representative timesteps


def is_style(sketch: str) -> bool:
    return sketch in styles.STYLES


def _decoded_shape(path: str | Path, param: str) -> tuple[int, int]:
    """(height, width) of an example file as displayed, decoded in full as training will read it.

    A structural check is not enough: PIL's ``verify`` does not decode JPEG data, so a cut-off JPEG
    would pass it and fail only after the diffusion model has loaded.
    """
    try:
        height, width = images.read_rgb(path, param=param).shape[-2:]
    except images.ImageError as err:
        raise ExampleError(f"{param}: {err}") from None
    return height, width


def check_example(params: Params) -> None:
    """Checks of the example settings and files (each file decoded once), run before any model loads."""
    cfg = params.example
    n_tokens = len(clip_tokenizer()(cfg.prompt, truncation=False).input_ids)
    if n_tokens > 77:
        raise ExampleError(
            f"example.prompt is {n_tokens} tokens long but CLIP reads at most 77 (including start and end); shorten it"
        )
    source_shape = None
    if cfg.image is not None:
        source_shape = _decoded_shape(cfg.image, "example.image")
    if is_style(cfg.sketch):
        if cfg.sketch in ("hed", "anime") and cfg.style_weights is None:
            raise ExampleError(
                f"example.sketch={cfg.sketch} needs its network weights: set example.style_weights to the file "
                "(pytorch-hed's network-bsds500.pytorch, or informative-drawings' anime_style/netG_A_latest.pth), "
                "or use a weight-free style (xdog, canny, dog)"
            )
        if cfg.style_weights is not None and not Path(cfg.style_weights).is_file():
            raise ExampleError(f"example.style_weights: {cfg.style_weights} not found")
        return
    path = Path(cfg.sketch)
    if not path.exists() and path.suffix == "":
        raise ExampleError(
            f"example.sketch={cfg.sketch!r} is neither a built-in style ({', '.join(styles.STYLES)}) nor an existing file"
        )
    height, width = _decoded_shape(path, "example.sketch")
    ref_h, ref_w = source_shape or (1, 1)
    if abs(width / height - ref_w / ref_h) > 0.01 * (ref_w / ref_h):
        source = f"the photo {cfg.image} ({ref_w}x{ref_h})" if source_shape else "the generated source image (square)"
        raise ExampleError(
            f"example.sketch {path} is {width}x{height} but {source} has another aspect ratio; the drawing must be "
            "traced over the source image: crop or pad it to the same aspect ratio"
        )


def _source_trajectory(model: SDModel, params: Params, unet_specs, vae_specs, keep: list[int], progress: bool):
    """Sample (or invert and regenerate) the example's trajectory; returns (result, photo or None, cond)."""
    cfg, s = params.example, params.sample
    cond = encode_prompts(model, [cfg.prompt])
    capture = Capture(unet=unet_specs, vae=vae_specs, halves="both", keep=keep, on_cpu=False)
    if cfg.image is None:
        noise = initial_noise(model, [cfg.seed], s.resolution)
        result = sample_conditions(
            model, cond, noise, steps=s.steps, guidance=s.guidance, eta=s.eta, seeds=[cfg.seed], capture=capture,
            decode=s.decode, progress=progress,
        )
        return result, None, cond
    photo = images.load_image(cfg.image, s.resolution).unsqueeze(0)
    noise = invert(model, encode_image(model, photo), [cfg.prompt], steps=s.steps, guidance=1.0, progress=progress)
    result = sample_conditions(
        model, cond, noise, steps=s.steps, guidance=1.0, eta=0.0, capture=capture, decode=s.decode, progress=progress
    )
    return result, photo, cond


def inputs_from_result(result: SampleResult, device: torch.device) -> GeneratorInputs:
    return GeneratorInputs(
        unet={k: v.to(device) for k, v in result.unet.items()},
        vae={k: v.to(device) for k, v in result.vae.items()},
        rgb=(result.images * 2 - 1).to(device),
    )


def build_example(
    model: SDModel, params: Params, unet_specs, vae_specs, keep: list[int], progress: bool = True
) -> Example:
    cfg, size = params.example, params.sample.resolution
    result, photo, cond = _source_trajectory(model, params, unet_specs, vae_specs, keep, progress)
    image = photo if photo is not None else result.images.cpu()  # on_cpu=False keeps them on the device
    if is_style(cfg.sketch):
        sketch = styles.apply_style(cfg.sketch, image[0], weights=cfg.style_weights)
    else:
        shape = images.check_image_file(cfg.image) if cfg.image is not None else None
        sketch = images.load_sketch(cfg.sketch, size, source_shape=shape)
    device = model.device
    return Example(
        prompt=cfg.prompt,
        cond=cond,
        image=image.to(device),
        sketch=sketch.unsqueeze(0).to(device),
        inputs=inputs_from_result(result, device),
    )
