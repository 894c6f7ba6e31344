"""The paper's ablation switches (issue 15, item 3): each tested for what it changes.

- ``train.cdst: off``: the conditions used are the random prior draws from iteration 0;
- ``train.vae_fusion: off``: no VAE-reduce parameters, the output ignores the VAE features;
- ``train.aggregation: one``: no lower aggregator, one aggregator over every layer, all trained;
- ``analyze.k: 1``: the one timestep whose points are closest on average to the overall centre.
"""

import types

import numpy as np
import pytest
import torch
import yaml

from diffsketch.training import trainer as training
from diffsketch.analysis.timesteps import analyze
from diffsketch.training.cdst import cdst_weight
from diffsketch.core.params import AnalyzeConfig, ParamsError, load_params, parse_params
from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.training.generator import GeneratorConfig, GeneratorInputs, SketchGenerator, load_generator, parameter_counts, save_generator
from diffsketch.diffusion.models import TINY_UNET_CONFIG, TINY_VAE_CONFIG
from diffsketch.training.prior import fit_prior
from test_analysis import TIMESTEPS, synthetic_store

T = 2
RES = 128


@pytest.fixture(scope="module")
def specs():
    return unet_layers(types.SimpleNamespace(**TINY_UNET_CONFIG), RES, 8), vae_layers(types.SimpleNamespace(**TINY_VAE_CONFIG), RES)


def _inputs(unet_specs, vae_specs, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return GeneratorInputs(
        unet={s.name: torch.randn(batch, T, 2, s.channels, s.size, s.size, generator=g) for s in unet_specs},
        vae={s.name: torch.randn(batch, s.channels, s.size, s.size, generator=g) for s in vae_specs},
        rgb=torch.rand(batch, 3, RES, RES, generator=g) * 2 - 1,
    )


def _build(specs, **kw):
    torch.manual_seed(0)
    return SketchGenerator(*specs, T, **kw).eval()


# --- schema -----------------------------------------------------------------------------------


def test_switches_parse_yaml_on_off_and_reject_bad_values(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  cdst: off\n  vae_fusion: off\n  aggregation: one\nanalyze:\n  k: 1\n")
    p = load_params(tmp_path / "p.yaml")
    assert (p.train.cdst, p.train.vae_fusion, p.train.aggregation, p.analyze.k) == ("off", "off", "one", 1)
    defaults = parse_params({})
    assert (defaults.train.cdst, defaults.train.vae_fusion, defaults.train.aggregation) == ("on", "on", "two")
    assert yaml.safe_load("x: on")["x"] is True  # why the validator exists
    for key, bad in (("cdst", "maybe"), ("vae_fusion", 3), ("aggregation", "three")):
        with pytest.raises(ParamsError, match=rf"train\.{key}"):
            parse_params({"train": {key: bad}})
    with pytest.raises(ParamsError, match=r"analyze\.k"):
        parse_params({"analyze": {"k": 0}})


# --- train.cdst -------------------------------------------------------------------------------


def _conditions(monkeypatch, cdst: str, iterations, horizon=10, batch=2):
    """The text conditions that Trainer.sample_batch hands to the sampler, per iteration."""
    params = parse_params({"train": {"cdst": cdst, "cdst_horizon": horizon, "batch": batch}, "sample": {"resolution": 64}})
    prior = fit_prior(torch.randn(20, 77, 32, generator=torch.Generator().manual_seed(0)), 8, meta={"model": "tiny"})
    trainer = object.__new__(training.Trainer)  # only what sample_batch reads; no model loads
    trainer.params, trainer.prior, trainer.indices = params, prior, [0]
    trainer.unet_specs = trainer.vae_specs = []
    trainer.example = types.SimpleNamespace(cond=torch.full((1, 77, 32), 7.0))
    trainer.model = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    trainer.halving = training.batching.Halving(batch, torch.device("cpu"), "train")
    seen = []
    monkeypatch.setattr(training, "initial_noise", lambda model, seeds, *a, **k: torch.zeros(len(seeds), 4, 8, 8))
    monkeypatch.setattr(training, "sample_conditions", lambda model, cond, *a, **k: seen.append(cond.clone()))
    monkeypatch.setattr(training.SampleResult, "cat", staticmethod(lambda results: results))
    for i in iterations:
        trainer.sample_batch(i)
    return seen, prior, params


def test_cdst_off_uses_random_prior_conditions_from_the_first_iteration(monkeypatch):
    on, prior, params = _conditions(monkeypatch, "on", [0, 5])
    off, _, _ = _conditions(monkeypatch, "off", [0, 5])
    example = torch.full((1, 77, 32), 7.0)
    # Oracle: the prior's own draw for that iteration's seed, and the method's weight table.
    for cond, i in zip(off, [0, 5]):
        draw = prior.sample(2, torch.Generator().manual_seed(training._seed(params, i, 0)))
        torch.testing.assert_close(cond, draw)
        assert not torch.allclose(cond, example.expand_as(cond))
    torch.testing.assert_close(on[0], example.expand_as(on[0]))  # CDST on: iteration 0 is the example's condition
    w = cdst_weight(5, 10)
    assert 0 < w < 1
    torch.testing.assert_close(on[1], w * example + (1 - w) * off[1])


# --- train.vae_fusion -------------------------------------------------------------------------


def test_vae_fusion_off_has_no_vae_parameters_and_ignores_vae_features(specs):
    unet_specs, vae_specs = specs
    full, ablated = _build(specs), _build(specs, vae_fusion=False)
    assert any(n.startswith("decoder.reduce.") for n, _ in full.named_parameters())
    assert not any(n.startswith("decoder.reduce.") for n, _ in ablated.named_parameters())
    # Oracle from the specs: each fusion step reads max(C // 32, 8) fewer channels per VAE layer of its level,
    # the head also 3 fewer (no decoded RGB image).
    sizes = sorted({s.size for s in vae_specs})
    reduced = [sum(max(s.channels // 32, 8) for s in vae_specs if s.size == size) for size in sizes]
    assert [a - b for a, b in zip(full.fusion_in_channels(), ablated.fusion_in_channels())] == reduced[:-1] + [reduced[-1] + 3]

    x, y = _inputs(*specs, seed=0), _inputs(*specs, seed=1)
    other_vae = GeneratorInputs(x.unet, y.vae, x.rgb)
    with torch.no_grad():
        assert torch.equal(ablated(x), ablated(other_vae))  # VAE features do not matter
        assert torch.equal(ablated(x), ablated(GeneratorInputs(x.unet, {}, x.rgb)))  # nor need to be there
        assert not torch.equal(full(x), full(other_vae))  # ...they do for the full method
        assert not torch.equal(ablated(x), ablated(GeneratorInputs(y.unet, x.vae, x.rgb)))  # UNet features still do


def test_vae_fusion_head_input_channels_by_hand(specs):
    """The tiny config by hand: VAE decoder levels 16/32/64/128 px with 5/3/3/3 layers of 32/32/16/16 channels,
    each reduced to max(C // 32, 8) = 8; the concatenated UNet features are 2 x 40 = 80 (higher width of 32 ch:
    8 * round(1.2 * 32 / 8) = 40); each fusion step outputs half the next level's VAE width: 16, 8, 8.
    on:  80 + 5*8 = 120, 16 + 3*8 = 40, 8 + 3*8 = 32, head 8 + 3*8 + 3 (RGB) = 35.
    off: 80, 16, 8, head 8 (the last fusion output alone, as the authors' use_VAE=False Conv_block(64, 64))."""
    full, ablated = _build(specs), _build(specs, vae_fusion=False)
    assert full.fusion_in_channels() == [120, 40, 32, 35]
    assert ablated.fusion_in_channels() == [80, 16, 8, 8]
    assert ablated.decoder.head[0][0].in_channels == 8 and full.decoder.head[0][0].in_channels == 35


def test_vae_fusion_off_reads_nothing_from_the_vae_decoder(specs):
    """off: neither the VAE features nor the decoded image (the VAE decoder's output) reach the generator:
    replacing both by random tensors or by NaN leaves the output unchanged (and finite). on: each of them changes it."""
    full, ablated = _build(specs), _build(specs, vae_fusion=False)
    x, y = _inputs(*specs, seed=0), _inputs(*specs, seed=1)
    nan_vae = {k: torch.full_like(v, float("nan")) for k, v in x.vae.items()}
    nan_rgb = torch.full_like(x.rgb, float("nan"))
    with torch.no_grad():
        base = ablated(x)
        assert torch.isfinite(base).all()
        assert torch.equal(ablated(GeneratorInputs(x.unet, y.vae, y.rgb)), base)  # random VAE features and image
        assert torch.equal(ablated(GeneratorInputs(x.unet, nan_vae, nan_rgb)), base)  # NaN: nothing of them is read
        assert torch.equal(ablated(GeneratorInputs(x.unet, {}, nan_rgb)), base)
        full_base = full(x)
        assert not torch.equal(full(GeneratorInputs(x.unet, x.vae, y.rgb)), full_base)  # on: the image is read
        assert not torch.equal(full(GeneratorInputs(x.unet, y.vae, x.rgb)), full_base)  # on: the VAE features are read
        assert torch.isnan(full(GeneratorInputs(x.unet, x.vae, nan_rgb))).any()
        assert torch.isnan(full(GeneratorInputs(x.unet, nan_vae, x.rgb))).any()


# --- train.aggregation ------------------------------------------------------------------------


def test_one_level_aggregation_has_no_lower_aggregator_and_trains_every_layer(specs):
    unet_specs, _ = specs
    one = _build(specs, aggregation="one")
    assert one.lower is None and not any(n.startswith("lower.") for n, _ in one.named_parameters())
    assert parameter_counts(one)["lower"] == 0
    assert one.higher.mixing.shape == (T, len(unet_specs))  # T slots (no slot for a lower output) x every layer
    assert one.higher.size == unet_specs[-1].size and one.higher.in_channels == [s.channels for s in unet_specs]

    x = _inputs(*specs)
    one.train()
    one(x).mean().backward()
    no_grad = [n for n, p in one.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    # a low-resolution (lower-block) layer is read: changing it changes the output
    first = unet_specs[0].name
    changed = GeneratorInputs({**x.unet, first: x.unet[first] + 1.0}, x.vae, x.rgb)
    with torch.no_grad():
        one.eval()
        assert not torch.equal(one(x), one(changed))

    two = _build(specs)
    assert two.lower is not None and two.higher.mixing.shape == (T + 1, len(two.higher_names))
    with pytest.raises(ValueError, match="aggregation"):
        SketchGenerator(*specs, T, aggregation="three")


def test_ablated_generators_save_and_load_as_trained(specs, tmp_path):
    gen = _build(specs, vae_fusion=False, aggregation="one")
    save_generator(gen, tmp_path / "g.safetensors")
    back, _ = load_generator(tmp_path / "g.safetensors")
    assert (back.config.vae_fusion, back.config.aggregation) == (False, "one")
    x = _inputs(*specs)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), gen(x))
    old = {k: v for k, v in _build(specs).config.to_dict().items() if k not in ("vae_fusion", "aggregation")}
    assert GeneratorConfig.from_dict(old).vae_fusion is True and GeneratorConfig.from_dict(old).aggregation == "two"


# --- analyze.k: 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.05, 2.0])
def test_single_timestep_is_the_one_closest_to_the_overall_centre(tmp_path, noise):
    path = synthetic_store(tmp_path / "s.zarr", noise=noise)
    cfg = AnalyzeConfig(pca_dims=5, k_min=2, k_max=5, k=1, strategy="kmeans", seed=0)
    result = analyze(path, cfg, progress=False)
    assert result.k == 1 and len(result.selected) == 1
    # Oracle: brute force over the projection, mean Euclidean distance of each timestep's points to the mean of all.
    centre = result.projection.mean(axis=0)
    mean_dist = [np.linalg.norm(result.projection[result.row_step == t] - centre, axis=1).mean() for t in range(len(TIMESTEPS))]
    assert result.selected[0] == int(np.argmin(mean_dist))
    assert result.cluster_sizes.tolist() == [len(result.row_step)] and set(result.row_cluster.tolist()) == {0}
    info = result.timesteps_json()
    assert info["k"] == 1 and info["timesteps"] == [TIMESTEPS[result.selected[0]]]
    assert np.isnan(result.metrics()["silhouette"]) and 1 not in result.k_values  # no silhouette for one cluster
    uniform = analyze(path, cfg.model_copy(update={"strategy": "uniform"}), progress=False)
    assert len(uniform.selected) == 1


# --- end to end -------------------------------------------------------------------------------


def test_train_stage_runs_with_every_ablation_at_once(tiny, tmp_path):
    """w/o CDST + w/o VAE fusion + one-level aggregation + one timestep: the train stage runs and records them."""
    import json

    from test_training import make_params, prepare

    paths = prepare(tmp_path, indices=(1,))
    params = make_params(train={"iterations": 2, "cdst": "off", "vae_fusion": "off", "aggregation": "one"})
    record = training.run_train(params, paths, progress=False, model=tiny)
    assert record["cdst_weight"] == 0.0
    weights = [float(r.split("\t")[-1]) for r in (paths.live / "plots/metrics/train/cdst_weight.tsv").read_text().splitlines()[1:]]
    assert weights == [0.0, 0.0]  # random conditions from iteration 0 (the horizon is 3 in make_params)
    gen, _ = load_generator(paths.generator)
    assert (gen.timesteps, gen.config.vae_fusion, gen.config.aggregation, gen.lower) == (1, False, "one", None)
    assert np.isfinite(record["loss"]) and json.loads(paths.generator.with_suffix(".json").read_text())["config"]["timesteps"] == 1
