import json
import types

import pytest
import torch

from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.training.generator import (
    GeneratorConfig,
    GeneratorInputs,
    GeneratorLoadError,
    SketchGenerator,
    _groups,
    load_generator,
    parameter_counts,
    save_generator,
)
from diffsketch.diffusion.models import SD15_UNET_CONFIG, SD15_VAE_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

T = 3


def specs(unet_cfg, vae_cfg, resolution):
    return (
        unet_layers(types.SimpleNamespace(**unet_cfg), resolution, 8),
        vae_layers(types.SimpleNamespace(**vae_cfg), resolution),
    )


def make_inputs(unet_specs, vae_specs, timesteps, batch, resolution, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return GeneratorInputs(
        unet={
            s.name: torch.randn(batch, timesteps, 2, s.channels, s.size, s.size, generator=g).to(dtype)
            for s in unet_specs
        },
        vae={s.name: torch.randn(batch, s.channels, s.size, s.size, generator=g).to(dtype) for s in vae_specs},
        rgb=torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1,
    )


@pytest.fixture(scope="module")
def tiny_specs():
    return specs(TINY_UNET_CONFIG, TINY_VAE_CONFIG, 128)


@pytest.fixture
def tiny_gen(tiny_specs):
    torch.manual_seed(0)
    return SketchGenerator(*tiny_specs, T)


@pytest.fixture(scope="module")
def tiny_inputs(tiny_specs):
    return make_inputs(*tiny_specs, T, batch=2, resolution=128, dtype=torch.float16)


def test_groups():
    assert _groups(960, 16) == 16 and _groups(240, 16) == 16 and _groups(384, 32) == 32
    assert _groups(24, 16) == 12 and _groups(10, 32) == 10 and _groups(7, 4) == 1


def test_sd15_channel_table_on_meta_device():
    unet_specs, vae_specs = specs(SD15_UNET_CONFIG, SD15_VAE_CONFIG, 512)
    with torch.device("meta"):
        gen = SketchGenerator(unet_specs, vae_specs, 13)
    assert gen.lower_names == [f"up{i}_res{j}" for i in range(3) for j in range(3)]
    assert gen.higher_names == ["up3_res0", "up3_res1", "up3_res2"]
    assert (gen.lower.out_channels, gen.lower.size) == (960, 32)
    assert all(b.conv1.out_channels == 240 for b in gen.lower.bottlenecks)
    assert (gen.higher.out_channels, gen.higher.size) == (384, 64)
    assert gen.concat_channels == 768
    assert gen.fusion_in_channels() == [848, 304, 152, 91]
    with torch.device("meta"):
        ablated = SketchGenerator(unet_specs, vae_specs, 13, vae_fusion=False)
    # the authors' use_VAE=False widths: fuse 768 -> 256, 256 -> 128, 128 -> 64, then Conv_block(64, 64)
    assert ablated.fusion_in_channels() == [768, 256, 128, 64]
    assert (ablated.decoder.head[0][0].in_channels, ablated.decoder.head[0][0].out_channels) == (64, 64)
    assert gen.lower.mixing.numel() == 13 * 9
    assert gen.higher.mixing.shape == (14, 3)  # slot 0 = the lower aggregator's output
    counts = parameter_counts(gen)
    assert counts["lower"] == 18_302_517  # the reference count: same bottlenecks + 117 mixing weights
    assert counts == {"lower": 18_302_517, "higher": 826_026, "fusion": 2_542_225, "total": 21_670_768}

    # A meta forward checks every shape through to the output.
    with torch.device("meta"):
        inputs = GeneratorInputs(
            unet={s.name: torch.empty(1, 13, 2, s.channels, s.size, s.size, dtype=torch.float16) for s in unet_specs},
            vae={s.name: torch.empty(1, s.channels, s.size, s.size, dtype=torch.float16) for s in vae_specs},
            rgb=torch.empty(1, 3, 512, 512),
        )
        assert gen.aggregate(inputs.to(dtype=torch.float32).unet).shape == (1, 768, 64, 64)
        assert gen(inputs).shape == (1, 1, 512, 512)


def test_tiny_forward_shape_and_range(tiny_gen, tiny_inputs, tiny_specs):
    assert tiny_gen.fusion_in_channels() == [120, 40, 32, 35]
    assert tiny_inputs.batch == 2
    out = tiny_gen(tiny_inputs)  # float16 inputs are cast to the module's dtype
    assert out.shape == (2, 1, 128, 128) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # Samples are independent (GroupNorm is per sample): the first alone gives the same sketch.
    first = GeneratorInputs(
        {k: v[:1] for k, v in tiny_inputs.unet.items()}, {k: v[:1] for k, v in tiny_inputs.vae.items()},
        tiny_inputs.rgb[:1],
    )
    torch.testing.assert_close(tiny_gen(first), out[:1], atol=1e-5, rtol=1e-4)


def test_every_parameter_gets_a_gradient(tiny_gen, tiny_inputs):
    """The authors' higher aggregator dropped the lower one's output; here everything trains."""
    target = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    (tiny_gen(tiny_inputs) - target).abs().mean().backward()
    dead = [n for n, p in tiny_gen.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    names = [n for n, _ in tiny_gen.named_parameters()]
    assert any(n.startswith("lower.bottlenecks.0.") for n in names) and "higher.mixing" in names
    assert any(n.startswith("decoder.reduce.mid_res0.") for n in names)


def test_lower_features_reach_the_output(tiny_gen, tiny_inputs):
    with torch.no_grad():
        out = tiny_gen(tiny_inputs)
        unet = dict(tiny_inputs.unet)
        unet["up0_res0"] = unet["up0_res0"] + 3.0 * torch.randn_like(unet["up0_res0"])
        changed = tiny_gen(GeneratorInputs(unet, tiny_inputs.vae, tiny_inputs.rgb))
    assert (changed - out).abs().max() > 1e-4


def test_mixing_weights_start_uniform(tiny_gen):
    for agg, slots in ((tiny_gen.lower, T), (tiny_gen.higher, T + 1)):
        w = agg.mixing_weights()
        assert w.shape[0] == slots
        torch.testing.assert_close(w, torch.full_like(w, 1 / w.numel()))


def test_vae_reductions_are_registered(tiny_gen, tiny_specs):
    _, vae_specs = tiny_specs
    keys = tiny_gen.state_dict().keys()
    for s in vae_specs:
        assert f"decoder.reduce.{s.name}.0.weight" in keys and f"decoder.reduce.{s.name}.0.bias" in keys
        assert f"decoder.reduce.{s.name}.1.0.weight" in keys  # the ConvBlock's conv
        assert tiny_gen.state_dict()[f"decoder.reduce.{s.name}.0.weight"].shape[:2] == (8, s.channels)


def test_cfg_halves_are_ordered(tiny_gen, tiny_inputs):
    """Channels [0, P) come from the uncond half, [P, 2P) from the cond half; swapping them matters."""
    p = tiny_gen.higher.out_channels
    with torch.no_grad():
        unet = tiny_inputs.to(dtype=torch.float32).unet
        agg = tiny_gen.aggregate(unet)
        cond_changed = {k: torch.stack([v[:, :, 0], torch.randn_like(v[:, :, 1])], dim=2) for k, v in unet.items()}
        agg2 = tiny_gen.aggregate(cond_changed)
        assert agg.shape == (2, 2 * p, 16, 16)
        torch.testing.assert_close(agg2[:, :p], agg[:, :p])
        assert (agg2[:, p:] - agg[:, p:]).abs().max() > 1e-3

        swapped = {k: v.flip(2) for k, v in tiny_inputs.unet.items()}
        out = tiny_gen(tiny_inputs)
        out_swapped = tiny_gen(GeneratorInputs(swapped, tiny_inputs.vae, tiny_inputs.rgb))
    assert (out - out_swapped).abs().max() > 1e-4


def test_bad_inputs_and_specs_raise(tiny_gen, tiny_inputs, tiny_specs):
    wrong_t = {k: v[:, :2] for k, v in tiny_inputs.unet.items()}
    with pytest.raises(ValueError, match="T=3"):
        tiny_gen(GeneratorInputs(wrong_t, tiny_inputs.vae, tiny_inputs.rgb))
    with pytest.raises(ValueError, match="missing vae"):
        tiny_gen(GeneratorInputs(tiny_inputs.unet, {}, tiny_inputs.rgb))
    unet_specs, _ = tiny_specs
    _, vae_256 = specs(TINY_UNET_CONFIG, TINY_VAE_CONFIG, 256)
    with pytest.raises(ValueError, match="smallest VAE feature size"):
        SketchGenerator(unet_specs, vae_256, T)
    gappy = [s for s in tiny_specs[1] if not s.name.startswith("up2_")]  # 16, 32, 128: no 64 level
    with pytest.raises(ValueError, match="double"):
        SketchGenerator(unet_specs, gappy, T)


def test_config_round_trip(tiny_gen):
    d = json.loads(json.dumps(tiny_gen.config.to_dict()))
    assert GeneratorConfig.from_dict(d) == tiny_gen.config
    rebuilt = SketchGenerator.from_config(d)
    assert rebuilt.state_dict().keys() == tiny_gen.state_dict().keys()
    with pytest.raises(ValueError, match="malformed"):
        GeneratorConfig.from_dict({"unet_specs": [], "timesteps": 3})


def test_save_load_round_trip(tiny_gen, tiny_inputs, tmp_path):
    path = tmp_path / "out" / "generator.safetensors"
    save_generator(tiny_gen, path, meta={"step": 7, "style": "pen"})
    assert path.is_file() and path.with_suffix(".json").is_file()
    loaded, meta = load_generator(path)
    assert meta == {"step": 7, "style": "pen"}
    with torch.no_grad():
        assert torch.equal(loaded(tiny_inputs), tiny_gen(tiny_inputs))
    # A folder works too.
    save_generator(tiny_gen, tmp_path)
    assert (tmp_path / "generator.json").is_file()
    assert load_generator(tmp_path)[1] == {}


def test_load_errors_name_the_file(tiny_gen, tmp_path):
    path = tmp_path / "generator.safetensors"
    with pytest.raises(GeneratorLoadError, match="not found") as e:
        load_generator(path)
    assert str(path.with_suffix(".json")) in str(e.value)

    save_generator(tiny_gen, path)
    good = path.read_bytes()
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(GeneratorLoadError) as e:
        load_generator(path)
    assert str(path) in str(e.value)

    path.write_bytes(good)
    json_path = path.with_suffix(".json")
    json_path.write_text("{ truncated")
    with pytest.raises(GeneratorLoadError) as e:
        load_generator(path)
    assert str(json_path) in str(e.value)

    # Weights that don't match the config (a different T changes the mixing-weight shapes).
    other = SketchGenerator(tiny_gen.config.unet_layer_specs(), tiny_gen.config.vae_layer_specs(), T + 1)
    save_generator(other, tmp_path / "other.safetensors")
    json_path.write_text((tmp_path / "other.json").read_text())
    with pytest.raises(GeneratorLoadError, match="do not match") as e:
        load_generator(path)
    assert str(path) in str(e.value)

    path.unlink()
    with pytest.raises(GeneratorLoadError, match="not found") as e:
        load_generator(path)
    assert str(path) in str(e.value)
