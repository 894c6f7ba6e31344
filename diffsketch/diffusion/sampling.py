"""Our own DDIM sampler with classifier-free guidance, and DDIM inversion.

Written out (rather than calling ``StableDiffusionPipeline``) so that timesteps, predicted x0 and
every UNet call are explicit and later stages can hook any step. With the same model, prompt,
seed, steps and guidance its images equal the diffusers pipeline's (tested).

Names, code to paper: ``noise_pred`` is the UNet's epsilon prediction, ``pred_original_sample``
(``pred_x0``) the predicted clean latent x0, ``guidance`` the classifier-free guidance scale w.
What a run captures is one :class:`Capture`; every other option is keyword-only::

    result = sample(model, ["a cat"], [0], resolution=512, steps=50, guidance=5.0,
                    capture=Capture(unet=unet_layers(model.unet), pool=2, halves="both"))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from diffsketch.diffusion.features import FeatureCapture, LayerSpec
from diffsketch.diffusion.models import CompileWatch, SDModel

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    images: torch.Tensor  # (B, 3, H, W) float32 in [0, 1], on the CPU (on the device with on_cpu=False)
    latents: torch.Tensor  # (B, C, h, w) final latents, float32, same place as images
    noise: torch.Tensor  # (B, C, h, w) initial noise, float32, CPU
    timesteps: list[int]
    unet: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, T, halves, C, g, g) fp16
    vae: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, C, g, g) fp16, from decoding `images`
    # With Capture(exponents=True): the power of two each row was divided by to fit float16 (0: as is)
    unet_exponents: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, T) int8
    vae_exponents: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) int8

    @classmethod
    def cat(cls, parts: list[SampleResult]) -> SampleResult:
        """One result from the results of consecutive parts of a batch (in order), as if sampled together."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            images=torch.cat([p.images for p in parts]),
            latents=torch.cat([p.latents for p in parts]),
            noise=torch.cat([p.noise for p in parts]),
            timesteps=parts[0].timesteps,
            unet={k: torch.cat([p.unet[k] for p in parts]) for k in parts[0].unet},
            vae={k: torch.cat([p.vae[k] for p in parts]) for k in parts[0].vae},
            unet_exponents={k: torch.cat([p.unet_exponents[k] for p in parts]) for k in parts[0].unet_exponents},
            vae_exponents={k: torch.cat([p.vae_exponents[k] for p in parts]) for k in parts[0].vae_exponents},
        )

    def images_uint8(self) -> torch.Tensor:
        """(B, H, W, 3) uint8, rounded as diffusers' ``numpy_to_pil`` does."""
        return (self.images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()


def prompt_token_lengths(model: SDModel, prompts: list[str]) -> list[int]:
    return [len(ids) for ids in model.tokenizer(prompts, truncation=False).input_ids]


@torch.no_grad()
def encode_prompts(model: SDModel, prompts: list[str]) -> torch.Tensor:
    """CLIP text embeddings (B, 77, D), padded to 77 tokens as SD does."""
    ids = model.tokenizer(
        prompts, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return model.text_encoder(ids.to(model.device))[0].to(model.dtype)


@torch.no_grad()
def empty_embedding(model: SDModel, batch: int) -> torch.Tensor:
    """The empty prompt's embedding (CFG's unconditional half) for ``batch`` items, encoded once per
    model and reused (the text encoder treats every item alone, so this is the embedding a batch
    of empty prompts would get)."""
    cached = model.cache.get("empty_embedding")
    if cached is None:
        cached = model.cache["empty_embedding"] = encode_prompts(model, [""])
    return cached.expand(batch, -1, -1)


def initial_noise(model: SDModel, seeds: list[int], resolution: int) -> torch.Tensor:
    """Per-trajectory noise from a CPU generator seeded with its own seed: batch- and device-independent."""
    side = resolution // model.vae_scale_factor
    shape = (1, model.latent_channels, side, side)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Capture:
    """Which internal features a sampling run records, and where it keeps them.

    Attributes:
        unet: UNet layers captured at every kept step (``(B, T, halves, C, g, g)`` fp16 each).
        vae: VAE-decoder layers captured while the final image is decoded (``(B, C, g, g)``).
        pool: ``"full"`` (no pooling) or the side ``g`` each feature map is average-pooled to.
        halves: ``"cond"``, ``"uncond"`` or ``"both"``: which classifier-free-guidance half of the
            UNet batch is kept (``"single"`` without guidance).
        keep: step indices whose UNet features are kept (``None``: every step).
        on_cpu: copy features, images and latents to the host (without blocking the loop);
            ``False`` keeps them on the model's device (training and pairs read them there).
        exponents: divide each trajectory's features that would overflow float16 by a power of
            two, given in the result's ``unet_exponents`` / ``vae_exponents`` (the feature store
            keeps them; :func:`~diffsketch.diffusion.features.overflow_exponents`).
    """

    unet: tuple[LayerSpec, ...] | list[LayerSpec] = ()
    vae: tuple[LayerSpec, ...] | list[LayerSpec] = ()
    pool: int | str = "full"
    halves: str = "cond"
    keep: list[int] | None = None
    on_cpu: bool = True
    exponents: bool = False


NO_CAPTURE = Capture()


@torch.no_grad()
def ddim_loop(
    model: SDModel,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    seeds: list[int] | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Denoise ``latents`` with DDIM; CFG batches are ``[uncond; cond]`` as in diffusers
    (guidance is applied whenever ``uncond`` is given).

    ``callback(i, t, latents, pred_x0)`` runs after each step. With ``eta > 0`` the per-step
    noise of trajectory b comes from a generator seeded with ``seeds[b] + 1``.
    """
    scheduler = model.scheduler
    scheduler.set_timesteps(steps)  # on the CPU: the schedule is read as Python ints, never from the device
    # The scheduler's arithmetic reads Python ints (no device-to-host sync per step); the UNet
    # gets the same timestep as a device tensor (a compiled UNet does not recompile per value).
    timesteps = scheduler.timesteps.tolist()
    device_timesteps = scheduler.timesteps.to(model.device, non_blocking=True)
    do_classifier_free_guidance = uncond is not None
    context = torch.cat([uncond.expand_as(cond), cond]) if do_classifier_free_guidance else cond
    latents = latents.to(model.device, model.dtype) * scheduler.init_noise_sigma
    step_noise = None
    if eta > 0 and seeds:  # every step's noise drawn up front, in the order the steps use it, moved once
        generators = [torch.Generator("cpu").manual_seed(s + 1) for s in seeds]
        shape = (1, *latents.shape[1:])
        step_noise = torch.stack([torch.cat([torch.randn(shape, generator=g) for g in generators]) for _ in timesteps])
        step_noise = step_noise.to(latents.device, latents.dtype, non_blocking=True)
    timer = _CompileTimer(model, latents.shape)
    for i, t in enumerate(tqdm(timesteps, desc="denoising", leave=False, disable=not progress)):
        timer.before_step(i)
        unet_input = latents if not do_classifier_free_guidance else torch.cat([latents] * 2)
        unet_input = scheduler.scale_model_input(unet_input, t)
        if model.channels_last:
            unet_input = unet_input.contiguous(memory_format=torch.channels_last)
        noise_pred = model.unet(unet_input, device_timesteps[i], encoder_hidden_states=context, return_dict=False)[0]
        timer.after_step(i)
        if do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)
        variance_noise = None if step_noise is None else step_noise[i]
        out = scheduler.step(noise_pred, t, latents, eta=eta, variance_noise=variance_noise)
        latents = out.prev_sample
        if callback is not None:
            callback(i, t, latents, out.pred_original_sample)
    timer.done(len(timesteps))
    return latents


class _CompileTimer:
    """With a compiled UNet, a loop whose first step compiled (a batch shape not seen before) logs what
    dynamo measured compiling, that step's wall time, and the steady-state time per step after it.
    Synchronises with the device only in such a loop (at the end of the first step and of the loop)."""

    def __init__(self, model: SDModel, shape):
        self.device, self.shape = model.device, tuple(shape)
        self.watch = CompileWatch() if model.compiled else None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before_step(self, i: int) -> None:
        if self.watch is not None and i == 0:
            self.watch.__enter__()
            self.start = time.perf_counter()

    def after_step(self, i: int) -> None:
        if self.watch is None or i != 0:
            return
        self.watch.__exit__(None, None, None)
        if not self.watch.compiles:
            self.watch = None  # nothing compiled: no synchronisation, nothing to log
            return
        self._sync()
        self.first = time.perf_counter() - self.start
        self.start = time.perf_counter()

    def done(self, steps: int) -> None:
        if self.watch is None:
            return
        self._sync()
        rest = time.perf_counter() - self.start
        per_step = rest / (steps - 1) * 1e3 if steps > 1 else float("nan")
        log.info(
            "compiled UNet, latents %s: %d graph(s) compiled in %.1f s; first step %.1f s, then %.1f ms per step",
            self.shape, self.watch.compiles, self.watch.seconds, self.first, per_step,
        )  # fmt: skip


@torch.no_grad()
def decode_latents(model: SDModel, latents: torch.Tensor, on_cpu: bool = True) -> torch.Tensor:
    """Latents to images in [0, 1] (B, 3, H, W), float32 on the CPU (or, with ``on_cpu=False``,
    on the model's device)."""
    z = latents / model.vae.config.scaling_factor
    if model.channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    image = model.vae.decode(z, return_dict=False)[0]
    image = (image.float() / 2 + 0.5).clamp(0, 1).contiguous()
    return image.cpu() if on_cpu else image


def sample(
    model: SDModel,
    prompts: list[str],
    seeds: list[int],
    *,
    resolution: int,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    capture: Capture = NO_CAPTURE,
    decode: str = "pred_x0",
    progress: bool = False,
) -> SampleResult:
    """Sample one image per (prompt, seed), capturing what ``capture`` names: UNet features at
    every step and VAE decoder features while the image is decoded (see :func:`sample_conditions`
    for ``decode``). Classifier-free guidance runs when ``guidance > 1``."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    if guidance <= 1.0 and capture.halves != "cond":
        raise ValueError(f"sample.halves={capture.halves!r} needs classifier-free guidance (guidance > 1)")
    return sample_conditions(
        model,
        encode_prompts(model, prompts),
        initial_noise(model, seeds, resolution),
        steps=steps,
        guidance=guidance,
        eta=eta,
        seeds=seeds,
        capture=capture,
        classifier_free_guidance=guidance > 1.0,
        decode=decode,
        progress=progress,
    )


def sample_conditions(
    model: SDModel,
    cond: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    seeds: list[int] | None = None,
    capture: Capture = NO_CAPTURE,
    classifier_free_guidance: bool = True,
    decode: str = "pred_x0",
    progress: bool = False,
) -> SampleResult:
    """Sample from text embeddings ``cond`` (B, 77, D) and initial ``noise``; the unconditional
    half is the empty prompt. This is the one denoising loop every stage runs.

    ``classifier_free_guidance=True`` runs the ``[uncond; cond]`` batch even at guidance 1 (so both
    halves' features exist). ``capture`` names the features recorded and where they are kept
    (:class:`Capture`); ``seeds`` seed the per-step noise when ``eta > 0``.

    ``decode`` names the latent the VAE turns into the image and the VAE decoder features:
    ``"pred_x0"``, the predicted x0 of the last DDIM step (the authors' code), or ``"latent"``, the
    final latent (diffusers' pipeline). With ``set_alpha_to_one=False`` the last step lands on
    alphas_cumprod[0], so the final latent is about 0.9996 x0 + 0.03 eps: the two differ slightly.
    """
    if decode not in ("pred_x0", "latent"):
        raise ValueError(f"decode={decode!r}: use 'pred_x0' or 'latent'")
    uncond = empty_embedding(model, len(cond)) if classifier_free_guidance else None
    last: dict[str, torch.Tensor] = {}

    def keep_pred_x0(i: int, t: int, latents: torch.Tensor, pred_x0: torch.Tensor) -> None:
        last["pred_x0"] = pred_x0

    halves = capture.halves if classifier_free_guidance else "single"
    unet_capture = FeatureCapture(
        model.unet, list(capture.unet), capture.pool, halves, capture.keep, to_cpu=capture.on_cpu, exponents=capture.exponents
    )
    with unet_capture as unet_cap:
        latents = ddim_loop(
            model, noise, cond, uncond, steps=steps, guidance=guidance, eta=eta, seeds=seeds, callback=keep_pred_x0,
            progress=progress,
        )
    with FeatureCapture(model.vae, list(capture.vae), capture.pool, to_cpu=capture.on_cpu, exponents=capture.exponents) as vae_cap:
        decoded = last["pred_x0"] if decode == "pred_x0" else latents
        images = decode_latents(model, decoded, on_cpu=capture.on_cpu)
    latents = latents.float()
    return SampleResult(
        images=images,
        latents=latents.cpu() if capture.on_cpu else latents,
        noise=noise,
        timesteps=[int(t) for t in model.scheduler.timesteps],
        unet=unet_cap.stacked(),
        vae={k: v[:, 0] for k, v in vae_cap.stacked().items()},
        unet_exponents=unet_cap.stacked_exponents(),
        vae_exponents={k: v[:, 0] for k, v in vae_cap.stacked_exponents().items()},
    )


@torch.no_grad()
def encode_image(model: SDModel, images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (B, 3, H, W) to scaled latents (the posterior mean, deterministic)."""
    x = images.to(model.device, model.dtype) * 2 - 1
    return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor


@torch.no_grad()
def invert(
    model: SDModel,
    latents: torch.Tensor,
    prompts: list[str],
    *,
    steps: int,
    guidance: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM inversion: run the deterministic DDIM update backwards from a clean latent to x_T.

    Regenerating from the result with :func:`ddim_loop` (same prompt, steps, eta 0) returns close
    to ``latents``. Guidance 1 (the default) inverts most faithfully.
    """
    from diffusers import DDIMInverseScheduler

    inverse = DDIMInverseScheduler.from_config(model.scheduler.config)
    inverse.set_timesteps(steps)  # on the CPU, as in ddim_loop
    cond = encode_prompts(model, prompts)
    do_classifier_free_guidance = guidance > 1.0
    context = torch.cat([empty_embedding(model, len(prompts)), cond]) if do_classifier_free_guidance else cond
    x = latents.to(model.device, model.dtype)
    timesteps = inverse.timesteps.tolist()  # ints for the scheduler: no sync per step
    device_timesteps = inverse.timesteps.to(model.device, non_blocking=True)
    for i, t in enumerate(tqdm(timesteps, desc="inverting", leave=False, disable=not progress)):
        unet_input = torch.cat([x] * 2) if do_classifier_free_guidance else x
        if model.channels_last:
            unet_input = unet_input.contiguous(memory_format=torch.channels_last)
        noise_pred = model.unet(unet_input, device_timesteps[i], encoder_hidden_states=context, return_dict=False)[0]
        if do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance * (noise_pred_cond - noise_pred_uncond)
        x = inverse.step(noise_pred, t, x).prev_sample
    return x
