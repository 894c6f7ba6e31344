"""The feature and pairs stores open in xarray (Zarr v3 dimension names, coordinate arrays), and
stores written before the names existed still work in every command."""

import json
import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from conftest import small_params, store_arrays
from diffsketch.store import zarr_store as store
from diffsketch.store.collect import run_sample

xr = pytest.importorskip("xarray")

COORDINATES = {"timestep", "unet/timestep", "unet/half"}  # what format 2 adds besides the names
EXPONENTS = {"unet_exponent", "vae_exponent"}  # what format 3 adds


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
    """A feature store from the real sampling path: both halves, `pool: full` (layers of different
    channel counts and grids), 6 steps so the analysis can run on it."""
    tmp = tmp_path_factory.mktemp("xarray")
    prompts = tmp / "prompts"
    prompts.mkdir()
    (prompts / "animals.txt").write_text("a photo of a horse in mud\n")
    (prompts / "food.txt").write_text("a bowl of ramen\n")
    params = small_params(prompts, trajectories=2, steps=6, halves="both", pool="full")
    return run_sample(params, tmp / "f.zarr", progress=False, model=tiny), params


def _layer_dims(spec: dict, leading: tuple) -> tuple:
    side = spec["size"]  # pool: full keeps each layer's own grid
    return (*leading, f"channel_{spec['channels']}", f"y_{side}", f"x_{side}")


def test_unet_group_opens_with_named_dimensions_and_timestep_coordinates(sampled):
    path, _ = sampled
    root = zarr.open_group(str(path), mode="r")
    timesteps = root["timesteps"][:]
    halves = root.attrs["halves"]
    ds = xr.open_zarr(path, group="unet")

    specs = root.attrs["unet_layers"]
    assert set(ds.data_vars) == {s["name"] for s in specs}  # coordinates are not data
    assert len({s["channels"] for s in specs}) > 1 and len({s["size"] for s in specs}) > 1  # the conflicting case
    np.testing.assert_array_equal(ds["timestep"].values, timesteps)
    # DDIM "leading" spacing with steps_offset 1, for 6 steps
    assert ds.indexes["timestep"].tolist() == timesteps.tolist() == [831, 665, 499, 333, 167, 1]
    assert ds["half"].values.tolist() == halves == ["uncond", "cond"]
    for spec in specs:
        name = spec["name"]
        assert ds[name].dims == _layer_dims(spec, ("trajectory", "timestep", "half")), name
        np.testing.assert_array_equal(ds[name].values, root[f"unet/{name}"][:], err_msg=name)
        assert ds[name].attrs["module"] == spec["module"]

    # select by value: the 2nd timestep's conditional half
    picked = ds.sel(timestep=int(timesteps[1]), half="cond")
    for spec in specs:
        expected = root[f"unet/{spec['name']}"][:, 1, halves.index("cond")]
        np.testing.assert_array_equal(picked[spec["name"]].values, expected)
    assert int(picked["timestep"]) == int(timesteps[1])


def test_vae_and_root_groups_open_with_named_dimensions(sampled):
    path, _ = sampled
    root = zarr.open_group(str(path), mode="r")
    vae = xr.open_zarr(path, group="vae")
    specs = root.attrs["vae_layers"]
    assert set(vae.data_vars) == {s["name"] for s in specs}
    for spec in specs:
        assert vae[spec["name"]].dims == _layer_dims(spec, ("trajectory",))
        np.testing.assert_array_equal(vae[spec["name"]].values, root[f"vae/{spec['name']}"][:])

    top = xr.open_zarr(path)
    n, r = 2, root.attrs["resolution"]
    assert top["images"].dims == ("trajectory", "pixel_y", "pixel_x", "rgb") and top["images"].shape == (n, r, r, 3)
    for name in ("noise", "latents"):
        assert top[name].dims == ("trajectory", "latent_channel", "latent_y", "latent_x")
    for name in ("seeds", "labels", "prompt_ids", "complete"):
        assert top[name].dims == ("trajectory",)
    assert top["timesteps"].dims == ("timestep",)
    assert top["unet_exponent"].dims == ("trajectory", "timestep", "unet_layer")
    assert top["vae_exponent"].dims == ("trajectory", "vae_layer") and (top["vae_exponent"].values == 0).all()
    np.testing.assert_array_equal(top["timestep"].values, root["timesteps"][:])
    for name in ("images", "noise", "latents", "seeds", "labels", "prompt_ids", "complete", "timesteps"):
        np.testing.assert_array_equal(top[name].values, root[name][:], err_msg=name)
    assert top.attrs["fingerprint"] == root.attrs["fingerprint"] and top.attrs["format_version"] == 3


def test_inspect_lists_data_arrays_not_coordinates(sampled):
    path, _ = sampled
    root = zarr.open_group(str(path), mode="r")
    listed = {name for name, *_ in store.summary(path)["arrays"]}
    layers = {f"{g}/{s['name']}" for g in ("unet", "vae") for s in root.attrs[f"{g}_layers"]}
    top = {"images", "noise", "latents", "timesteps", "seeds", "labels", "prompt_ids", "complete"} | EXPONENTS
    assert listed == layers | top
    assert COORDINATES <= set(store_arrays(path))  # they are in the store all the same
    assert store.data_arrays(root["unet"]) and {n for n, _ in store.data_arrays(root["unet"])} == {
        s["name"] for s in root.attrs["unet_layers"]
    }


def test_pairs_store_opens_in_xarray(tiny, teacher, tmp_path):
    from test_distill import params

    from diffsketch.student.pairs import run_pairs

    gen_path, prior_path = teacher
    out = run_pairs(params(count=2), gen_path, prior_path, tmp_path / "pairs.zarr", progress=False, model=tiny)
    root = zarr.open_group(str(out), mode="r")
    ds = xr.open_zarr(out)
    assert ds["images"].dims == ("pair", "pixel_y", "pixel_x", "rgb") and ds["images"].shape == (2, 64, 64, 3)
    assert ds["sketches"].dims == ("pair", "pixel_y", "pixel_x")
    assert ds["seeds"].dims == ds["complete"].dims == ("pair",)
    for name in ("images", "sketches", "seeds", "complete"):
        np.testing.assert_array_equal(ds[name].values, root[name][:], err_msg=name)
    assert ds["complete"].values.all() and ds["sketches"].values.std() > 0


def _strip_to_old_layout(path) -> None:
    """Rewrite a store as the code before dimension names wrote it: no `dimension_names`, no
    coordinate arrays, no exponent arrays, no per-array attributes, format_version 1, metadata
    consolidated again."""
    for coordinate in COORDINATES | EXPONENTS:
        shutil.rmtree(path / coordinate)
    for meta_file in path.rglob("zarr.json"):
        meta = json.loads(meta_file.read_text())
        meta.pop("dimension_names", None)
        meta.pop("consolidated_metadata", None)
        if meta["node_type"] == "array":
            meta["attributes"] = {}
        elif meta_file.parent == path:
            meta["attributes"]["format_version"] = 1
        meta_file.write_text(json.dumps(meta))
    zarr.consolidate_metadata(str(path))


def test_store_without_dimension_names_still_works(sampled, tmp_path, tiny):
    from diffsketch.analysis.timesteps import analyze
    from diffsketch.cli.main import app
    from diffsketch.core.params import AnalyzeConfig

    path, params = sampled
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    _strip_to_old_layout(old)
    with pytest.raises(KeyError, match="dimension_names"):  # really the old layout: the error
        xr.open_zarr(old, group="unet")
    assert store.open_store(old).attrs["format_version"] == 1

    new_arrays, old_arrays = store_arrays(path), store_arrays(old)
    assert set(new_arrays) - set(old_arrays) == COORDINATES | EXPONENTS
    for key, value in old_arrays.items():
        np.testing.assert_array_equal(value, new_arrays[key], err_msg=key)

    # the analysis reads it as before: the same timesteps from the same features
    cfg = AnalyzeConfig(pca_dims=3, k_min=2, k_max=4, k=3)  # 2 trajectories x 6 steps
    a, b = analyze(path, cfg, progress=False), analyze(old, cfg, progress=False)
    np.testing.assert_array_equal(a.selected, b.selected)
    np.testing.assert_allclose(a.projection, b.projection, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a.timesteps, b.timesteps)

    # inspect: the same arrays listed
    assert store.summary(old)["arrays"] == [a for a in store.summary(path)["arrays"] if a[0] not in EXPONENTS]
    result = CliRunner().invoke(app, ["inspect", str(old)])
    assert result.exit_code == 0, result.output
    assert "2/2 complete" in result.output and "unet/up3_res2" in result.output and "vae/mid_res0" in result.output

    # sample resumes into it (an unfinished old store is finished, still in the old layout)
    root = store.open_store(old, mode="r+")
    root["complete"][1] = False
    root["images"][1] = 0
    run_sample(params, old, progress=False, model=tiny)
    assert store.complete_mask(store.open_store(old)).all()
    resumed = store_arrays(old)["images"].astype(int)
    assert np.abs(resumed - new_arrays["images"].astype(int)).max() <= 1  # batch of 1 instead of 2: rounding only
    assert resumed[1].std() > 0
    assert store.dimension_names(zarr.open_group(str(old), mode="r")["unet/up3_res2"]) is None
