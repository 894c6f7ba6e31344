"""Stable Diffusion 1.x as the pipeline uses it: loading, the DDIM sampler, feature capture, prompts.

In: ``core`` (model params, devices). Out: :class:`~diffsketch.diffusion.models.SDModel` (the
tiny offline model, SD 1.5 with random weights, a local diffusers folder, a single checkpoint or a
hub id), the one denoising loop (:func:`~diffsketch.diffusion.sampling.sample_conditions`), the
layer specs and taps that capture UNet and VAE-decoder features, and the prompt plan.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.diffusion.models`: ``SDModel``, ``ModelLoadError``, ``check_model_reachable``, ``clip_tokenizer``, ``load_model``, ``model_device``, ``model_terms``
- :mod:`~diffsketch.diffusion.sampling`: ``Capture``, ``NO_CAPTURE``, ``SampleResult``, ``encode_image``, ``encode_prompts``, ``initial_noise``, ``invert``, ``prompt_token_lengths``, ``sample``, ``sample_conditions``
- :mod:`~diffsketch.diffusion.features`: ``LayerSpec``, ``FeatureCapture``, ``check_pool``, ``pool_features``, ``unet_layers``, ``vae_layers``
- :mod:`~diffsketch.diffusion.prompts`: ``PromptsError``, ``load_prompts``, ``plan_trajectories``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "models": ["SDModel", "ModelLoadError", "check_model_reachable", "clip_tokenizer", "load_model", "model_device", "model_terms"],
        "sampling": ["Capture", "NO_CAPTURE", "SampleResult", "encode_image", "encode_prompts", "initial_noise", "invert", "prompt_token_lengths", "sample", "sample_conditions"],
        "features": ["LayerSpec", "FeatureCapture", "check_pool", "pool_features", "unet_layers", "vae_layers"],
        "prompts": ["PromptsError", "load_prompts", "plan_trajectories"],
    },
)
