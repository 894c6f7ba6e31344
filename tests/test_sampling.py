import numpy as np
import pytest
import torch

from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.diffusion.sampling import Capture, ddim_loop, decode_latents, encode_image, encode_prompts, invert, sample

PROMPTS = ["a photo of a horse in mud", "a bowl of ramen"]


def _pipeline_images(tiny, guidance, scheduler=None):
    pipe = tiny.as_pipeline()
    if scheduler is not None:
        pipe.scheduler = scheduler
    return pipe(
        PROMPTS,
        height=128,
        width=128,
        num_inference_steps=12,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="np",
    ).images


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_images_equal_diffusers_pipeline(tiny, guidance):
    """`decode: latent` decodes the final latent, as diffusers' pipeline does."""
    ours = sample(tiny, PROMPTS, [3, 4], resolution=128, steps=12, guidance=guidance, decode="latent")
    diff = np.abs(_pipeline_images(tiny, guidance) - ours.images.permute(0, 2, 3, 1).numpy()).max()
    assert diff <= 1e-4
    assert ours.images.std() > 0.01  # not a constant image


def test_pred_x0_decoding_is_the_last_steps_x0(tiny):
    """The default decodes the last step's predicted x0 (the authors' code). A second route to it:
    diffusers' pipeline with ``set_alpha_to_one=True``, whose last DDIM step returns x0 itself (the
    earlier steps do not depend on that flag)."""
    from diffusers import DDIMScheduler

    ours = sample(tiny, PROMPTS, [3, 4], resolution=128, steps=12, guidance=5.0).images.permute(0, 2, 3, 1).numpy()
    to_x0 = DDIMScheduler.from_config(tiny.scheduler.config, set_alpha_to_one=True)
    assert np.abs(_pipeline_images(tiny, 5.0, to_x0) - ours).max() <= 1e-4
    assert np.abs(_pipeline_images(tiny, 5.0) - ours).max() > 1e-3  # and it is not the final latent's image


def test_vae_features_follow_the_decoded_latent(tiny):
    vspecs = vae_layers(tiny.vae.config, 64)
    x0 = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, capture=Capture(vae=vspecs, pool=1))
    final = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, decode="latent", capture=Capture(vae=vspecs, pool=1))
    assert torch.equal(x0.latents, final.latents)  # the same trajectory
    assert not torch.equal(x0.vae["up3_res2"], final.vae["up3_res2"])
    with pytest.raises(ValueError, match="decode"):
        sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, decode="x0")


def test_seed_and_prompt_change_the_image(tiny):
    a = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0).images
    assert not torch.equal(a, sample(tiny, PROMPTS[:1], [4], resolution=64, steps=4, guidance=5.0).images)
    assert not torch.equal(a, sample(tiny, PROMPTS[1:], [3], resolution=64, steps=4, guidance=5.0).images)


def test_captured_features_shapes_and_halves(tiny):
    specs = unet_layers(tiny.unet.config, 128, tiny.vae_scale_factor)
    vspecs = vae_layers(tiny.vae.config, 128)
    both = sample(tiny, PROMPTS, [3, 4], resolution=128, steps=5, guidance=5.0, capture=Capture(unet=specs, vae=vspecs, pool=2, halves="both"))
    cond = sample(tiny, PROMPTS, [3, 4], resolution=128, steps=5, guidance=5.0, capture=Capture(unet=specs, vae=vspecs, pool=2, halves="cond"))
    assert set(both.unet) == {s.name for s in specs} and set(both.vae) == {s.name for s in vspecs}
    for s in specs:
        assert both.unet[s.name].shape == (2, 5, 2, s.channels, 2, 2)
        assert torch.equal(both.unet[s.name][:, :, 1:], cond.unet[s.name])
        assert not torch.equal(both.unet[s.name][:, :, 0], both.unet[s.name][:, :, 1])  # uncond differs
    for s in vspecs:
        assert both.vae[s.name].shape == (2, s.channels, 2, 2)
    assert both.timesteps == [801, 601, 401, 201, 1]
    assert both.images_uint8().shape == (2, 128, 128, 3) and both.images_uint8().dtype == torch.uint8


def test_features_do_not_depend_on_batch_composition(tiny):
    specs = unet_layers(tiny.unet.config, 64, tiny.vae_scale_factor)
    together = sample(tiny, PROMPTS, [3, 4], resolution=64, steps=4, guidance=5.0, capture=Capture(unet=specs, pool=1))
    alone = sample(tiny, PROMPTS[1:], [4], resolution=64, steps=4, guidance=5.0, capture=Capture(unet=specs, pool=1))
    assert torch.allclose(together.images[1:], alone.images, atol=1e-5)
    assert torch.allclose(together.unet["up3_res2"][1:].float(), alone.unet["up3_res2"].float(), atol=1e-2)


def test_eta_noise_is_seeded(tiny):
    a = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, eta=1.0).images
    b = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, eta=1.0).images
    c = sample(tiny, PROMPTS[:1], [3], resolution=64, steps=4, guidance=5.0, eta=0.0).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_halves_without_guidance_refused(tiny):
    with pytest.raises(ValueError, match="guidance"):
        sample(tiny, PROMPTS, [1, 2], resolution=64, steps=2, guidance=1.0, capture=Capture(halves="both"))


def test_inversion_regenerates_the_latent(tiny):
    """Invert a clean latent to x_T, denoise again: back close to the start (far closer than from noise)."""
    start = sample(tiny, PROMPTS[:1], [7], resolution=128, steps=20, guidance=1.0).latents
    cond = encode_prompts(tiny, PROMPTS[:1])
    x_t = invert(tiny, start, PROMPTS[:1], steps=20)
    back = ddim_loop(tiny, x_t, cond, None, steps=20, guidance=1.0)
    from_noise = ddim_loop(tiny, torch.randn_like(x_t), cond, None, steps=20, guidance=1.0)
    error = ((back - start).norm() / start.norm()).item()
    baseline = ((from_noise - start).norm() / start.norm()).item()
    assert error < 0.1 and error < baseline / 10


def test_real_image_round_trip_through_vae(tiny):
    image = torch.rand(1, 3, 64, 64)
    latent = encode_image(tiny, image)
    assert latent.shape == (1, 4, 8, 8)
    assert decode_latents(tiny, latent).shape == (1, 3, 64, 64)
