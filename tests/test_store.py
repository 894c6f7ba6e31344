import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from conftest import REPO, assert_same_stores, small_params, store_arrays
from diffsketch.store import zarr_store as store
from diffsketch.store.collect import SampleInputError, run_sample


def test_store_layout_and_contents(prompts_dir, tmp_path, tiny):
    from diffsketch.diffusion.sampling import sample

    params = small_params(prompts_dir, halves="both", trajectories=3)
    out = run_sample(params, tmp_path / "f.zarr", progress=False)
    root = store.open_store(out)
    assert store.complete_mask(root).all()
    up = root["unet/up3_res2"]
    assert up.shape == (3, 4, 2, 32, 1, 1) and up.dtype == np.float16
    assert up.chunks == (1, 1, 2, 32, 1, 1) and up.shards == (1, 4, 2, 32, 1, 1)
    assert root["vae/up3_res2"].shape == (3, 16, 1, 1)
    assert root["images"].shape == (3, 64, 64, 3) and root["images"].dtype == np.uint8
    assert root["timesteps"][:].tolist() == [751, 501, 251, 1]
    attrs = root.attrs
    assert attrs["model"] == "tiny" and attrs["guidance"] == 5.0 and attrs["pool"] == 1 and attrs["resolution"] == 64
    assert attrs["halves"] == ["uncond", "cond"] and attrs["scheduler"]["steps_offset"] == 1
    assert attrs["classes"] == ["animals", "food", "vehicles"] and attrs["package_version"]
    assert len(attrs["unet_layers"]) == 12 and len(attrs["vae_layers"]) == 14
    prompts = [attrs["prompts"][i] for i in root["prompt_ids"][:]]
    assert prompts == ["a photo of a horse in mud", "a bowl of ramen", "a red bicycle"]
    assert [attrs["classes"][i] for i in root["labels"][:]] == ["animals", "food", "vehicles"]
    assert root["seeds"][:].tolist() == [0, 1, 2]
    # the stored trajectories are exactly what the sampler gives for their prompts and seeds (same batch)
    ref = sample(tiny, prompts[:2], [0, 1], resolution=64, steps=4, guidance=5.0)
    np.testing.assert_array_equal(root["images"][:2], ref.images_uint8().numpy())
    np.testing.assert_array_equal(root["noise"][:2], ref.noise.numpy())
    np.testing.assert_array_equal(root["latents"][:2], ref.latents.numpy())
    # compressed with zstd
    assert "blosc" in str(up.metadata.to_dict()).lower() and "zstd" in str(up.metadata.to_dict())


def test_interrupted_run_resumes_to_the_same_store(prompts_dir, tmp_path, monkeypatch):
    params = small_params(prompts_dir, trajectories=5)
    run_sample(params, tmp_path / "full.zarr", progress=False)

    calls = {"n": 0}
    original = store.write_trajectories

    def crash_midway(root, indices, unet, *rest):
        calls["n"] += 1
        if calls["n"] == 2:  # the 2nd batch: write one array of it, then die
            name, value = next(iter(unet.items()))
            root[f"unet/{name}"][indices[0] : indices[-1] + 1] = value
            raise KeyboardInterrupt
        original(root, indices, unet, *rest)

    monkeypatch.setattr(store, "write_trajectories", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        run_sample(params, tmp_path / "part.zarr", progress=False)
    assert store.complete_mask(store.open_store(tmp_path / "part.zarr")).tolist() == [True, True, False, False, False]
    before = store_arrays(tmp_path / "part.zarr")

    written = []
    monkeypatch.setattr(store, "write_trajectories", lambda root, i, *a: (written.append(list(i)), original(root, i, *a)))
    run_sample(params, tmp_path / "part.zarr", progress=False)
    assert written == [[2, 3], [4]]  # only the incomplete ones
    assert_same_stores(tmp_path / "full.zarr", tmp_path / "part.zarr")
    after = store_arrays(tmp_path / "part.zarr")
    for key in before:  # completed trajectories untouched
        if before[key].shape[:1] == (5,):
            np.testing.assert_array_equal(before[key][:2], after[key][:2])

    written.clear()
    run_sample(params, tmp_path / "part.zarr", progress=False)  # complete: nothing to do
    assert written == []


@pytest.mark.slow
def test_killed_process_resumes(prompts_dir, tmp_path):
    """SIGKILL a real `diffsketch sample` part-way; the rerun completes it and equals a clean run."""
    params = tmp_path / "params.yaml"
    params.write_text(
        f"model: {{id: tiny, device: cpu}}\nsample: {{prompts: {prompts_dir}, trajectories: 5, steps: 16, "
        "resolution: 64, pool: 1, batch_size: 1}\n"
    )
    cmd = [sys.executable, "-m", "diffsketch", "sample", "--params", str(params), "--no-progress", "--out"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + [str(tmp_path / "killed.zarr")], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(store.complete_mask(store.open_store(tmp_path / "killed.zarr")).sum())
        except Exception:
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = int(store.complete_mask(store.open_store(tmp_path / "killed.zarr")).sum())
    assert 1 <= partial < 5, "the kill should land part-way"
    subprocess.run(cmd + [str(tmp_path / "killed.zarr")], env=env, check=True, capture_output=True)
    subprocess.run(cmd + [str(tmp_path / "clean.zarr")], env=env, check=True, capture_output=True)
    assert_same_stores(tmp_path / "clean.zarr", tmp_path / "killed.zarr")


def test_changed_settings_keep_the_store_under_its_key(prompts_dir, tmp_path, caplog, capsys):
    """Other settings set the store aside (never delete it), setting them back resumes it, and a lower
    batch size (not part of the key) finds every trajectory done."""
    out = tmp_path / "f.zarr"
    run_sample(small_params(prompts_dir, trajectories=2), out, progress=False)
    before = store_arrays(out)
    with caplog.at_level("INFO", logger="diffsketch"):
        run_sample(small_params(prompts_dir, trajectories=2, steps=3), out, progress=False)
    assert "sample.steps 4 -> 3" in caplog.text
    assert store.open_store(out)["timesteps"].shape == (3,)
    (kept,) = (tmp_path / "f.zarr.kept").iterdir()
    assert kept.name == store.open_store(kept).attrs["fingerprint"]

    caplog.clear()
    with caplog.at_level("INFO", logger="diffsketch"):
        capsys.readouterr()
        run_sample(small_params(prompts_dir, trajectories=2, batch_size=1), out, progress=True)  # set back
    assert "is complete (2 trajectories); nothing to do" in caplog.text
    assert "trajectories" not in capsys.readouterr().err  # no empty progress bar beside the log line
    after = store_arrays(out)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert len(list((tmp_path / "f.zarr.kept").iterdir())) == 1  # the steps=3 store, kept in turn

    run_sample(small_params(prompts_dir, trajectories=2, steps=3), out, overwrite=True, progress=False)
    assert store.open_store(out)["timesteps"].shape == (3,)


def test_the_batch_size_changes_a_store_only_by_float_rounding(prompts_dir, tmp_path):
    """sample.batch_size is left out of the key: a store sampled one trajectory at a time agrees with one
    sampled two at a time within the tolerance docs/reruns.md states (features 1e-4 of their scale, images
    one grey level)."""
    run_sample(small_params(prompts_dir, trajectories=2, steps=2, batch_size=2), tmp_path / "two.zarr", progress=False)
    run_sample(small_params(prompts_dir, trajectories=2, steps=2, batch_size=1), tmp_path / "one.zarr", progress=False)
    two, one = store_arrays(tmp_path / "two.zarr"), store_arrays(tmp_path / "one.zarr")
    assert two.keys() == one.keys()
    for name in two:
        if two[name].dtype.kind not in "biuf":  # coordinates such as the halves' names
            assert np.array_equal(two[name], one[name]), name
            continue
        a, b = two[name].astype(np.float64), one[name].astype(np.float64)
        scale = max(np.abs(a).max(), 1.0)
        limit = 1.0 if name.endswith("images") else 1e-4 * scale
        assert np.abs(a - b).max() <= limit, name


def test_bad_inputs_fail_before_the_model_loads(prompts_dir, tmp_path, monkeypatch):
    import diffsketch.store.collect as collect

    def no_load(*a, **k):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(collect, "load_model", no_load)
    from diffsketch.diffusion.models import ModelLoadError
    from diffsketch.diffusion.prompts import PromptsError

    with pytest.raises(PromptsError, match="does not exist"):
        run_sample(small_params(tmp_path / "missing"), tmp_path / "a.zarr")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(PromptsError, match="no prompts"):
        run_sample(small_params(tmp_path / "empty.txt"), tmp_path / "a.zarr")
    params = small_params(prompts_dir).model_copy(
        update={"model": small_params(prompts_dir).model.model_copy(update={"id": str(tmp_path / "nowhere")})}
    )
    with pytest.raises(ModelLoadError, match="does not exist"):
        run_sample(params, tmp_path / "a.zarr")
    (tmp_path / "file").write_text("x")
    with pytest.raises(store.StoreError, match="not a folder"):
        run_sample(small_params(prompts_dir), tmp_path / "file")
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(store.StoreError, match="not writable"):
            run_sample(small_params(prompts_dir), ro / "a.zarr")
    with pytest.raises(SampleInputError, match="guidance"):
        run_sample(small_params(prompts_dir, guidance=1.0, halves="both"), tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_unwritable_output_is_refused(prompts_dir, tmp_path, monkeypatch):
    def deny(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.touch", deny)
    with pytest.raises(store.StoreError, match="not writable"):
        run_sample(small_params(prompts_dir), tmp_path / "out.zarr")


def test_pool_larger_than_layer_is_refused_before_sampling(prompts_dir, tmp_path, monkeypatch):
    import diffsketch.store.collect as collect

    monkeypatch.setattr(collect, "sample", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(ValueError, match="sample.pool=2 is larger than UNet layer up0_res0"):
        run_sample(small_params(prompts_dir, pool=2), tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_corrupt_store_message(tmp_path):
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{not json")
    with pytest.raises(store.StoreError, match=rf"{bad}: the store's metadata \(a zarr.json\) is damaged.*inspect --repair"):
        store.open_store(bad)
    with pytest.raises(store.StoreError, match="no zarr.json"):
        store.open_store(tmp_path)


def test_partly_complete_batch_writes_only_the_missing(prompts_dir, tmp_path, monkeypatch):
    """Resuming a batch whose first trajectory is complete rewrites only the second."""
    params = small_params(prompts_dir, trajectories=4)
    out = run_sample(params, tmp_path / "f.zarr", progress=False)
    reference = store_arrays(out)
    root = store.open_store(out, mode="r+")
    root["complete"][3] = False
    root["images"][3] = 0
    root["images"][2] = 7  # a completed trajectory must not be rewritten
    written = []
    original = store.write_trajectories
    monkeypatch.setattr(store, "write_trajectories", lambda r, i, *a: (written.append(list(i)), original(r, i, *a)))
    run_sample(params, out, progress=False)
    assert written == [[3]]
    after = store_arrays(out)
    np.testing.assert_array_equal(after["images"][3], reference["images"][3])
    assert (after["images"][2] == 7).all()


def test_runs_of_indices():
    assert store._runs([2, 3, 4, 7, 9, 10]) == [(0, 2, 5), (3, 7, 8), (4, 9, 11)]
    assert store._runs([5]) == [(0, 5, 6)]


def test_failed_array_write_leaves_its_batch_incomplete(prompts_dir, tmp_path, monkeypatch):
    """A real write failure part-way through a batch (the disk refuses the `latents` chunks of the
    2nd batch, after its features, images and noise are written): that batch is not marked complete,
    the 1st is, and a rerun finishes the store equal to a clean run.

    Guards against marking a run complete before (or while) its arrays are written."""
    params = small_params(prompts_dir, trajectories=4)  # batches [0, 1], [2, 3]
    real_set, failed = zarr.storage.LocalStore.set, []

    async def disk_full_on_second_latents(self, key, value):
        if key.startswith("latents/c/2/"):  # chunk (2, 0, 0, 0): trajectory 2, the 2nd batch
            failed.append(key)
            raise OSError(28, "No space left on device")
        return await real_set(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", disk_full_on_second_latents)
    from diffsketch.store.diskspace import DiskFullError

    with pytest.raises(DiskFullError, match="No space left"):
        run_sample(params, tmp_path / "part.zarr", progress=False)
    assert failed
    monkeypatch.undo()

    part = store.open_store(tmp_path / "part.zarr")
    assert store.complete_mask(part).tolist() == [True, True, False, False]
    assert part["images"][2].any() and part["noise"][2].any()  # the failure came after other arrays of the batch
    assert not part["latents"][2].any()

    run_sample(params, tmp_path / "part.zarr", progress=False)
    run_sample(params, tmp_path / "clean.zarr", progress=False)
    assert_same_stores(tmp_path / "clean.zarr", tmp_path / "part.zarr")


def test_trajectory_outside_the_first_batch_equals_sampling_it_alone(prompts_dir, tmp_path, tiny):
    """Trajectory 3 (2nd batch of 2) is its own prompt and seed `sample.seed + 3` regenerated alone:
    noise bit for bit (also against torch.randn with that seed), the rest within batching's rounding.

    Guards against seeding (or prompting) a trajectory by its position in its batch instead of its index."""
    import torch

    from diffsketch.diffusion.features import unet_layers, vae_layers
    from diffsketch.diffusion.sampling import Capture, sample

    params = small_params(prompts_dir, trajectories=4, seed=100, halves="both")
    root = store.open_store(run_sample(params, tmp_path / "f.zarr", progress=False))
    assert root["seeds"][:].tolist() == [100, 101, 102, 103]
    # class-interleaved order: animals, food, vehicles, then the 2nd prompt of animals
    assert root.attrs["prompts"][root["prompt_ids"][3]] == "a cat on a sofa"
    assert root.attrs["classes"][root["labels"][3]] == "animals"

    seed = 100 + 3
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))  # 64 px / 8, 4 channels
    np.testing.assert_array_equal(root["noise"][3:4], noise.numpy())

    unet_specs = unet_layers(tiny.unet.config, 64, tiny.vae_scale_factor, params.sample.capture)
    vae_specs = vae_layers(tiny.vae.config, 64)
    alone = sample(tiny, ["a cat on a sofa"], [seed], resolution=64, steps=4, guidance=5.0, eta=0.0, capture=Capture(unet=unet_specs, vae=vae_specs, pool=1, halves="both"))
    np.testing.assert_array_equal(root["noise"][3:4], alone.noise.numpy())
    np.testing.assert_allclose(root["latents"][3:4], alone.latents.numpy(), rtol=0, atol=1e-4)
    stored_images = root["images"][3:4].astype(int)
    assert np.abs(stored_images - alone.images_uint8().numpy().astype(int)).max() <= 1
    for group, features in (("unet", alone.unet), ("vae", alone.vae)):
        layers = {spec["name"] for spec in root.attrs[f"{group}_layers"]}
        assert set(features) == layers == {name for name, _ in store.data_arrays(root[group])}
        for name, value in features.items():
            np.testing.assert_allclose(
                root[f"{group}/{name}"][3:4].astype(np.float32), value.float().numpy(), rtol=1e-2, atol=1e-2,
                err_msg=f"{group}/{name}",
            )  # fmt: skip


def _activation(model, calls: list, on_calls, value: float, group: str = "unet") -> list:
    """A forward hook on the module of the tiny model's first captured ``group`` layer that sets its
    activations to ``value`` during the sampling calls ``on_calls`` (it runs before the feature tap
    installed when the model loaded, which keeps what it returns); ``[handle, "group/layer"]``."""
    import torch

    from diffsketch.diffusion.features import unet_layers, vae_layers

    if group == "unet":
        spec, root = unet_layers(model.unet.config, 64, model.vae_scale_factor, "residual")[0], model.unet
    else:
        spec, root = vae_layers(model.vae.config, 64)[0], model.vae

    def hook(module, args, output):
        if len(calls) in on_calls:
            output = torch.full_like(output, value)
        return output

    return [root.get_submodule(spec.module).register_forward_hook(hook, prepend=True), f"{group}/{spec.name}"]


@pytest.mark.parametrize(
    "value, exponent", [(65504.0, 0), (70_000.0, 1), (131_008.0, 1), (131_009.0, 2), (-70_000.0, 1), (1e30, 84)]
)
def test_overflow_exponent_is_the_smallest_power_of_two_that_fits_float16(value, exponent):
    import torch

    from diffsketch.diffusion.features import overflow_exponents

    x = torch.tensor([[value, 1.0], [1.0, 2.0], [float("inf"), 1e9], [float("nan"), 0.0], [0.0, 0.0]])
    assert overflow_exponents(x).tolist() == [exponent, 0, 0, 0, 0]  # non-finite rows: 0, left for the finiteness check
    assert abs(value / 2.0**exponent) <= 65504.0 and (exponent == 0 or abs(value / 2.0 ** (exponent - 1)) > 65504.0)
    assert np.isfinite(np.float16(value / 2.0**exponent))


def test_an_activation_beyond_float16_is_stored_finite_with_its_exponent(prompts_dir, tmp_path, tiny, monkeypatch):
    params = small_params(prompts_dir, trajectories=2, steps=2, batch_size=2)
    calls: list = []
    _counting(monkeypatch, calls)
    big = 2.0**17  # 131072: twice float16's range and a power of two, so stored exactly as 2**15 with exponent 2
    hooks = [_activation(tiny, calls, {1}, big, "unet"), _activation(tiny, calls, {1}, -3 * big, "vae")]
    try:
        out = run_sample(params, tmp_path / "features.zarr", progress=False, model=tiny)
    finally:
        for handle, _ in hooks:
            handle.remove()
    root = store.open_store(out)
    assert store.complete_mask(root).all() and "failed" not in root.attrs and len(calls) == 1  # one batch, no retry
    (_, unet_path), (_, vae_path) = hooks
    unet_name, vae_name = unet_path.split("/")[1], vae_path.split("/")[1]
    raw = root[unet_path][...]
    assert np.isfinite(raw).all() and (raw == 2.0**15).all()
    assert (store.read_features(root, "unet", unet_name) == big).all()
    assert (store.read_features(root, "unet", unet_name, (1, slice(None), 0)) == big).all()
    unet_exp = root["unet_exponent"][...]
    column = root["unet_exponent"].attrs["layers"].index(unet_name)
    assert (unet_exp[..., column] == 2).all() and (np.delete(unet_exp, column, axis=-1) == 0).all()
    vae_exp = root["vae_exponent"][...]
    vae_column = root["vae_exponent"].attrs["layers"].index(vae_name)
    assert (vae_exp[:, vae_column] == 3).all()  # 3 * 2**17 / 65504 = 6.0...: 2**3
    assert (store.read_features(root, "vae", vae_name, 0) == -3 * big).all()
    other = next(n for n in root["unet_exponent"].attrs["layers"] if n != unet_name)  # untouched: as stored
    assert np.array_equal(store.read_features(root, "unet", other), root[f"unet/{other}"][...])


def _counting(monkeypatch, calls: list) -> None:
    from diffsketch.store import collect

    real = collect.sample

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(collect, "sample", counted)


def test_an_infinite_activation_is_never_written_and_is_sampled_again(prompts_dir, tmp_path, tiny, monkeypatch):
    params = small_params(prompts_dir, trajectories=2, steps=2, batch_size=2)
    calls: list = []
    _counting(monkeypatch, calls)
    handle, name = _activation(tiny, calls, {1}, float("inf"))  # the first batch only; the float32 retries are clean
    written = []
    real_write = store.write_trajectories
    monkeypatch.setattr(store, "write_trajectories", lambda root, idx, *rest: written.append(list(idx)) or real_write(root, idx, *rest))
    try:
        out = run_sample(params, tmp_path / "features.zarr", progress=False, model=tiny)
    finally:
        handle.remove()
    assert written == [[0], [1]]  # nothing of the overflowing batch: each trajectory written from its retry
    arrays = store_arrays(out)
    assert all(np.isfinite(v).all() for v in arrays.values() if v.dtype.kind == "f")
    assert store.complete_mask(store.open_store(out)).all() and "failed" not in store.open_store(out).attrs


def test_an_infinite_activation_in_float32_too_is_recorded_as_failed(prompts_dir, tmp_path, tiny, monkeypatch):
    from diffsketch.store.collect import NonFiniteFeaturesError

    params = small_params(prompts_dir, trajectories=2, steps=2, batch_size=2)
    calls: list = []
    _counting(monkeypatch, calls)
    handle, name = _activation(tiny, calls, {1, 2}, float("nan"))  # the batch and the retry of trajectory 0
    try:
        with pytest.raises(NonFiniteFeaturesError, match=rf"1 trajectories \(0\) gave NaN or infinite values .*trajectory 0: {name}"):
            run_sample(params, tmp_path / "features.zarr", progress=False, model=tiny)
    finally:
        handle.remove()
    root = store.open_store(tmp_path / "features.zarr")
    assert store.complete_mask(root).tolist() == [False, True]
    assert root.attrs["failed"] == {"0": f"NaN or infinite values in {name}, also in float32"}
