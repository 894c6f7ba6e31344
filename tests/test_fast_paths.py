"""The fast paths of the one denoising loop (issue 14) give the plain path's results.

Oracles: a second tiny model with the plain settings (classic attention processor, contiguous
memory format, no compilation), sampling one trajectory at a time, and the bit-exact stores of
an uninterrupted run. Inductor's code generation takes minutes on a 2-core CPU, so most checks
of the compiled path trace it with a recording backend (the same dynamo graphs, run without
generated code); one slow test repeats them with inductor (1 to 2.5 minutes on 2 cores; skipped
where no C++ compiler is installed, or with ``DIFFSKETCH_TEST_INDUCTOR=0``).
"""

import logging
import os
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_same_stores, record_writes, small_params, store_arrays

from diffsketch.core import batching
from diffsketch.core.params import ModelConfig, parse_params
from diffsketch.diffusion.features import taps, unet_layers, vae_layers
from diffsketch.diffusion.models import apply_fast_paths, load_model, resolve_compile
from diffsketch.diffusion.sampling import Capture, sample

PROMPTS = ["a photo of a horse in mud", "a bowl of ramen"]


def _fresh(**cfg):
    return load_model(ModelConfig(id="tiny", device="cpu", **cfg))


def _run(model, prompts=PROMPTS, seeds=(3, 4), steps=3, pool=1, halves="both", capture="residual", keep=None, **kw):
    specs = unet_layers(model.unet.config, 64, model.vae_scale_factor, capture)
    vspecs = vae_layers(model.vae.config, 64)
    return sample(model, list(prompts), list(seeds), resolution=64, steps=steps, guidance=5.0,
                  capture=Capture(unet=specs, vae=vspecs, pool=pool, halves=halves, keep=keep), **kw)  # fmt: skip


def _assert_close(a, b, image_atol=1e-5, feature_atol=2e-3):
    assert torch.allclose(a.images, b.images, atol=image_atol), (a.images - b.images).abs().max()
    for group in ("unet", "vae"):
        fa, fb = getattr(a, group), getattr(b, group)
        assert fa.keys() == fb.keys() and fa
        for k in fa:
            assert fa[k].shape == fb[k].shape, k
            assert torch.allclose(fa[k].float(), fb[k].float(), atol=feature_atol, rtol=1e-3), (group, k)


def test_compile_param():
    assert parse_params({"model": {"compile": True}}).model.compile == "on"  # YAML's bare on
    assert parse_params({"model": {"compile": False}}).model.compile == "off"
    with pytest.raises(ValueError, match="model.compile"):
        parse_params({"model": {"compile": "fast"}})
    assert resolve_compile("auto", torch.device("cpu")) is False and resolve_compile("auto", torch.device("cuda")) is True
    assert resolve_compile("on", torch.device("cpu")) is True
    assert "compile" not in parse_params({}).model.model_dump()  # not in any fingerprint, like the device


def test_channels_last_and_sdpa_equal_the_plain_path(tiny):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    plain = _fresh()
    plain.unet.set_attn_processor(AttnProcessor())  # the classic (non-SDPA) attention
    plain.vae.set_attn_processor(AttnProcessor())
    fast = apply_fast_paths(_fresh(), channels_last=True)
    assert all(isinstance(p, AttnProcessor2_0) for p in fast.unet.attn_processors.values())
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and fast.channels_last
    assert not plain.channels_last
    _assert_close(_run(fast), _run(plain))


def test_compiled_path_equals_eager_and_never_recompiles(caplog):
    """One graph for the UNet and one for the VAE decoder (no graph breaks), the eager path's results, and
    no compilation after the first batch: not for a second batch of that shape, not for other capture
    settings (pool, halves, the ResNet's residual or output, kept steps), not inside a timed region.
    Dynamo decides guards and recompilations before any backend runs, so a recording backend (the
    graphs run as traced) counts what inductor would compile."""
    from diffsketch.diffusion.models import CompileWatch

    graphs = []

    def recording(gm, example_inputs):  # a torch.compile backend: keep the graph, run it as traced
        graphs.append(gm)
        return gm.forward

    eager = _fresh()
    compiled = apply_fast_paths(_fresh(), compile=True, backend=recording)
    caplog.set_level(logging.INFO, logger="diffsketch.diffusion.sampling")
    with CompileWatch() as first:
        got = _run(compiled, steps=2)
    assert len(graphs) == 2 and first.compiles == 2 and first.recompiles == 0  # the UNet's and the VAE decoder's
    # the loop's compile log: the UNet's one graph, dynamo's compile time within the first step's wall time
    (logged,) = [r.getMessage() for r in caplog.records if "graph(s) compiled" in r.getMessage()]
    compiled_s, first_step_s = (float(v) for v in re.findall(r"compiled in ([\d.]+) s; first step ([\d.]+) s", logged)[0])
    assert logged.startswith("compiled UNet, latents (2, 4, 8, 8): 1 graph(s)") and 0 < compiled_s <= first_step_s + 0.1
    caplog.clear()
    _assert_close(got, _run(eager, steps=2))

    settings = [dict(seeds=(5, 6), pool="full", capture="output", keep=[1]), dict(pool=2, halves="cond")]
    with CompileWatch() as timed:  # what a benchmark times after its warm-up
        for kw in settings:
            _run(compiled, steps=2, **kw)
    assert len(graphs) == 2 and timed.compiles == 0 and timed.recompiles == 0, timed.reasons
    assert not [r for r in caplog.records if "graph(s) compiled" in r.getMessage()]  # nothing compiled: nothing logged
    # the taps keep no output once the captures are closed
    assert all(v is None for v in taps(compiled.unet).slots.values()) and taps(compiled.unet).slots


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DIFFSKETCH_TEST_INDUCTOR") == "0", reason="DIFFSKETCH_TEST_INDUCTOR=0")
@pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))), reason="inductor needs a C++ compiler on a CPU")
def test_inductor_path_equals_eager():
    from diffsketch.diffusion.models import CompileWatch

    compiled = apply_fast_paths(_fresh(), compile=True)
    _assert_close(_run(compiled, steps=2), _run(_fresh(), steps=2), 1e-4, 1e-2)
    with CompileWatch() as timed:  # a second batch and other capture settings: nothing compiles
        _run(compiled, seeds=(5, 6), steps=2, pool="full", halves="cond", capture="output")
    assert timed.compiles == 0 and timed.recompiles == 0, timed.reasons


def test_batch_size_does_not_change_results(tiny):
    together = _run(tiny, PROMPTS + ["a red bicycle"], (3, 4, 5), eta=0.5)
    for i, (prompt, seed) in enumerate(zip(PROMPTS + ["a red bicycle"], (3, 4, 5))):
        alone = _run(tiny, [prompt], [seed], eta=0.5)
        assert torch.allclose(together.images[i : i + 1], alone.images, atol=1e-5)
        for k in alone.unet:
            assert torch.allclose(together.unet[k][i : i + 1].float(), alone.unet[k].float(), atol=2e-3, rtol=1e-3)


def test_fit_batch_and_probe_arithmetic():
    assert batching.fit_batch(fixed=1000, per_item=300, free=10_000, cap=100) == 25  # (8500 - 1000) // 300
    assert batching.fit_batch(1000, 300, 10_000, cap=7) == 7
    assert batching.fit_batch(9000, 300, 10_000, cap=100) == 1  # never below 1
    sizes = []

    def fake_peak(run, b, device):  # a memory model: 1000 bytes fixed, 300 per item
        run(b)
        return 1000 + 300 * b

    got = batching.probe_batch_size(sizes.append, torch.device("cpu"), 100, extra_per_item=100,
                                    measure=fake_peak, free_memory=lambda d: (10_000, 20_000))  # fmt: skip
    assert sizes == [1, 2] and got == (8500 - 1000) // 400
    assert batching.resolve_batch_size("auto", torch.device("cpu"), sizes.append, 100) == batching.CPU_DEFAULT
    assert batching.resolve_batch_size(3, torch.device("cpu"), sizes.append, 100) == 3 and sizes == [1, 2]


def test_probe_measures_peak_reserved_memory(monkeypatch):
    """The probe's peak is what the caching allocator reserves (fragmentation included), not what tensors
    hold: a fake allocator whose run reserves 900 bytes above the 100 it held, for 500 allocated."""
    state = {"reserved": 100, "peak_reserved": 100, "allocated": 50, "peak_allocated": 50}

    def run(batch):
        state.update(peak_reserved=1000, peak_allocated=550, reserved=600, allocated=50)

    for name, value in [("synchronize", lambda d=None: None), ("reset_peak_memory_stats", lambda d=None: None),
                        ("memory_reserved", lambda d=None: state["reserved"]), ("max_memory_reserved", lambda d=None: state["peak_reserved"]),
                        ("memory_allocated", lambda d=None: state["allocated"]), ("max_memory_allocated", lambda d=None: state["peak_allocated"])]:  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, value)
    assert batching.measure_peak(run, 2, torch.device("cuda")) == 900


def test_auto_batch_sample_store_matches_fixed_and_resumes(prompts_dir, tmp_path, tiny, monkeypatch):
    from diffsketch.store import zarr_store as store
    from diffsketch.store.collect import run_sample

    auto, fixed = small_params(prompts_dir, trajectories=5, batch_size="auto"), small_params(prompts_dir, trajectories=5, batch_size=1)
    run_sample(auto, tmp_path / "auto.zarr", progress=False, model=tiny)
    run_sample(fixed, tmp_path / "one.zarr", progress=False, model=tiny)
    assert store.open_store(tmp_path / "auto.zarr").attrs["batch_size"] == batching.CPU_DEFAULT
    a, b = store_arrays(tmp_path / "auto.zarr"), store_arrays(tmp_path / "one.zarr")
    for key in a:
        if a[key].dtype == np.uint8:  # images: rounding may flip a level
            assert np.abs(a[key].astype(int) - b[key].astype(int)).max() <= 1, key
        elif a[key].dtype.kind != "f":  # seeds, labels, flags, names
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key].astype(np.float64), b[key].astype(np.float64), atol=2e-3, rtol=1e-3, err_msg=key)

    # interrupted after the first batch, resumed while `auto` would now pick another batch: the recorded plan holds
    calls = record_writes(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_sample(auto, tmp_path / "part.zarr", progress=False, model=tiny)
    monkeypatch.setattr(batching, "CPU_DEFAULT", 1)
    resumed = record_writes(monkeypatch)
    run_sample(auto, tmp_path / "part.zarr", progress=False, model=tiny)
    assert calls + resumed == [[0, 1, 2, 3], [4], [4]]  # blocks of the recorded 4, not of today's 1
    assert_same_stores(tmp_path / "auto.zarr", tmp_path / "part.zarr")


def test_auto_batch_pairs_match_fixed_and_resume(tiny, teacher, tmp_path, monkeypatch):
    from conftest import interrupt_on_call

    import diffsketch.student.pairs as pairs_module
    from diffsketch.student.pairs import open_pairs, run_pairs

    gen_path, prior_path = teacher

    def params(batch_size):
        return parse_params({"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 6, "batch_size": batch_size}})

    run_pairs(params("auto"), gen_path, prior_path, tmp_path / "auto.zarr", progress=False, model=tiny)
    run_pairs(params(1), gen_path, prior_path, tmp_path / "one.zarr", progress=False, model=tiny)
    a, b = open_pairs(tmp_path / "auto.zarr"), open_pairs(tmp_path / "one.zarr")
    assert a.attrs["batch_size"] == batching.CPU_DEFAULT and a["complete"][:].all()
    for name in ("images", "sketches"):
        assert np.abs(a[name][:].astype(int) - b[name][:].astype(int)).max() <= 1, name
    assert a["sketches"][:].std() > 0

    real = interrupt_on_call(monkeypatch, pairs_module, "sample_conditions", 2)
    with pytest.raises(KeyboardInterrupt):
        run_pairs(params("auto"), gen_path, prior_path, tmp_path / "part.zarr", progress=False, model=tiny)
    assert open_pairs(tmp_path / "part.zarr")["complete"][:].tolist() == [True] * 4 + [False] * 2
    batches = []
    monkeypatch.setattr(pairs_module, "sample_conditions", lambda m, c, noise, *a, **k: (batches.append(len(noise)), real(m, c, noise, *a, **k))[1])
    monkeypatch.setattr(batching, "CPU_DEFAULT", 1)  # `auto` would now pick 1: the recorded blocks of 4 hold
    run_pairs(params("auto"), gen_path, prior_path, tmp_path / "part.zarr", progress=False, model=tiny)
    assert batches == [2]  # the rest of block [4, 5]
    c = open_pairs(tmp_path / "part.zarr")
    assert np.array_equal(a["images"][:], c["images"][:]) and np.array_equal(a["sketches"][:], c["sketches"][:])


def test_nonfinite_guard_checks_loss_and_gradients_at_one_host_sync(monkeypatch, caplog):
    """The training step's non-finite check reads the device once (one bool of a fused check of the loss
    and every gradient's largest element), and still catches a NaN or inf gradient under a finite loss."""
    from diffsketch.training.checkpoint import NonFiniteGuard

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    loss = net(torch.ones(2, 3)).sum()
    loss.backward()
    guard = NonFiniteGuard(5, "train", "causes")
    syncs = []
    real_bool, real_item = torch.Tensor.__bool__, torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: syncs.append("bool") or real_bool(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: syncs.append("item") or real_item(self))
    assert guard.ok(0, loss, net.parameters()) and syncs == ["bool"]  # finite: one host sync for 4 gradients and the loss
    net[1].bias.grad.fill_(3e38)  # large but finite: no overflow in the check
    assert guard.ok(1, loss, net.parameters())
    for i, (where, value) in enumerate([((0, "weight"), float("nan")), ((1, "bias"), float("inf"))]):
        grad = getattr(net[where[0]], where[1]).grad
        saved = grad.clone()
        grad.view(-1)[0] = value  # one bad element, the loss finite
        assert not guard.ok(2 + i, loss, net.parameters())
        grad.copy_(saved)
    assert not guard.ok(4, torch.tensor(float("nan")), net.parameters())
    assert guard.skipped == 3
    assert [m for m in caplog.messages if "non-finite" in m][-3:][0].endswith("gradient, step skipped (1 skipped so far)")
    assert "non-finite loss" in caplog.messages[-1]


def test_pairs_run_the_generator_in_the_model_dtype_under_autocast(tiny, teacher, tmp_path, monkeypatch):
    """The CUDA path (fp16 weights, autocast) exercised on the CPU in bfloat16: the generator's weights
    are cast once to the model's dtype and it runs under autocast in that dtype; the pairs agree with
    the fp32 ones (oracle) up to bfloat16 rounding."""
    from diffsketch.student.pairs import open_pairs, run_pairs
    from diffsketch.training.generator import SketchGenerator

    gen_path, prior_path = teacher
    settings = {"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 2, "batch_size": 2}}
    run_pairs(parse_params(settings), gen_path, prior_path, tmp_path / "fp32.zarr", progress=False, model=tiny)
    seen, real = [], SketchGenerator.forward

    def forward(self, inputs):
        seen.append((next(self.parameters()).dtype, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(self, inputs)

    monkeypatch.setattr(SketchGenerator, "forward", forward)
    bf16 = _fresh(dtype="bfloat16")
    settings["model"]["dtype"] = "bfloat16"
    run_pairs(parse_params(settings), gen_path, prior_path, tmp_path / "bf16.zarr", progress=False, model=bf16)
    assert seen == [(torch.bfloat16, True, torch.bfloat16)]
    a, b = open_pairs(tmp_path / "fp32.zarr"), open_pairs(tmp_path / "bf16.zarr")
    for name in ("images", "sketches"):
        x, y = a[name][:].astype(float), b[name][:].astype(float)
        assert np.abs(x - y).mean() < 3 and np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.99, name
