import pytest
import torch

from diffsketch.diffusion.features import FeatureCapture, LayerSpec, check_pool, unet_layers, vae_layers
from diffsketch.diffusion.models import SD15_UNET_CONFIG, SD15_VAE_CONFIG


def test_sd15_layer_table_on_meta_device():
    """SD 1.5's real configs give method.md's table, and hooks on a meta forward agree."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    specs = unet_layers(unet.config, 512, 8)
    assert [(s.channels, s.size) for s in specs] == [(1280, 8)] * 3 + [(1280, 16)] * 3 + [(640, 32)] * 3 + [(320, 64)] * 3
    vspecs = vae_layers(vae.config, 512)
    assert [(s.channels, s.size) for s in vspecs] == [(512, 64)] * 5 + [(512, 128)] * 3 + [(256, 256)] * 3 + [(128, 512)] * 3
    assert sum(s.channels * s.size**2 for s in specs) == 7_127_040  # values per CFG half per step (method.md)

    with FeatureCapture(unet, specs, "full", "both") as cap, torch.no_grad():
        x = torch.empty(2, 4, 64, 64, device="meta")
        unet(x, torch.tensor(1, device="meta"), encoder_hidden_states=torch.empty(2, 77, 768, device="meta"))
    for s in specs:
        assert tuple(cap.buffers[s.name][0].shape) == (1, 2, s.channels, s.size, s.size)
    with FeatureCapture(vae, vspecs, "full") as vcap, torch.no_grad():
        vae.decode(torch.empty(1, 4, 64, 64, device="meta"))
    for s in vspecs:
        assert tuple(vcap.buffers[s.name][0].shape) == (1, s.channels, s.size, s.size)


def test_tiny_specs_match_hooks(tiny):
    specs = unet_layers(tiny.unet.config, 128, tiny.vae_scale_factor, capture="output")
    assert len(specs) == 12
    with FeatureCapture(tiny.unet, specs, "full", "cond") as cap, torch.no_grad():
        tiny.unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=torch.randn(2, 77, 32))
    for s in specs:
        assert cap.buffers[s.name][0].shape == (1, 1, s.channels, s.size, s.size)


def test_residual_capture_is_resnet_output_minus_skip(tiny):
    """'residual' is the branch before the skip addition: output = shortcut(input) + residual."""
    resnet = tiny.unet.up_blocks[1].resnets[0]
    res = unet_layers(tiny.unet.config, 128, 8, "residual")
    out = unet_layers(tiny.unet.config, 128, 8, "output")
    inputs = []
    hook = resnet.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with FeatureCapture(tiny.unet, res, "full", "both") as rc, FeatureCapture(tiny.unet, out, "full", "both") as oc:
        with torch.no_grad():
            tiny.unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=torch.randn(2, 77, 32))
    hook.remove()
    skip = resnet.conv_shortcut(inputs[0]) if resnet.conv_shortcut is not None else inputs[0]
    skip = skip.unsqueeze(0)  # (1, halves=2, C, h, w), like the captured (batch, halves, ...)
    residual, output = rc.buffers["up1_res0"][0].float(), oc.buffers["up1_res0"][0].float()
    assert not torch.allclose(residual, output, atol=1e-2)
    assert torch.allclose(residual + skip, output, atol=1e-2, rtol=1e-2)


def test_pooling_and_halves():
    layer = torch.nn.Identity()
    spec = LayerSpec("x", "", 3, 8)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    with FeatureCapture(layer, [spec], 2, "both") as both, FeatureCapture(layer, [spec], 2, "cond") as cond:
        layer(x)
    got = both.stacked()["x"]  # (1, calls, halves, C, g, g)
    assert got.shape == (1, 1, 2, 3, 2, 2) and got.dtype == torch.float16
    assert torch.equal(got[:, :, 1], cond.stacked()["x"][:, :, 0])
    assert got[0, 0, 0, 0, 0, 0] == x[0, 0, :4, :4].mean()


def test_pool_larger_than_a_layer_is_refused():
    specs = [LayerSpec("up0_res0", "m", 8, 2), LayerSpec("up3_res0", "m", 4, 16)]
    check_pool(specs, 2, "UNet")
    check_pool(specs, "full", "UNet")
    with pytest.raises(ValueError, match=r"sample.pool=4 is larger than UNet layer up0_res0 \(2x2"):
        check_pool(specs, 4, "UNet")
