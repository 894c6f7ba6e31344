"""`diffsketch.store.open_dataset`: a store group as an xarray Dataset that refuses a chunk file absent
from a completed trajectory (zarr, and so `xarray.open_zarr`, read it as zeros) and leaves out the
trajectories that are not complete."""

import shutil

import numpy as np
import pytest
import zarr
from test_verify import sampled  # noqa: F401 - reused: a finished tiny store (2 trajectories, 2 steps, VAE layers)

from diffsketch.store import open_dataset
from diffsketch.store import zarr_store as store

xr = pytest.importorskip("xarray")

GROUPS = ["unet", "vae", None]  # None: the root group


@pytest.fixture
def features(sampled, tmp_path):  # noqa: F811 - the fixture imported above
    """A copy of the module's sampled store, to damage."""
    _, path = sampled
    copy = tmp_path / "features.zarr"
    shutil.copytree(path, copy)
    return copy


def _node(path, group):
    root = zarr.open_group(str(path), mode="r")
    return root if group is None else root[group]


def _first_entry_array(path, group) -> zarr.Array:
    """The group's first array written trajectory by trajectory (a UNet or VAE layer, or ``images``)."""
    arrays = [a for _, a in store.data_arrays(_node(path, group)) if a.metadata.dimension_names[0] == "trajectory"]
    return next(a for a in arrays if a.basename != "complete" and (a.shards or a.chunks)[0] == 1)


def _clear(path, trajectory: int) -> None:
    """Make ``trajectory`` one that was never written: its chunk files gone, its completion flag cleared."""
    root = zarr.open_group(str(path), mode="r+")
    for _, array in store.entry_arrays(root):
        if array.basename != "complete" and (array.shards or array.chunks)[0] == 1:
            for key in store.chunk_keys(array, trajectory):
                (path / key).unlink()
    root["complete"][trajectory] = False


@pytest.mark.parametrize("group", GROUPS, ids=str)
def test_a_complete_store_opens_with_the_values_zarr_reads(sampled, group):  # noqa: F811
    _, path = sampled
    ds = open_dataset(path, group)
    node = _node(path, group)
    names = {name for name, _ in store.data_arrays(node)}
    assert set(ds.data_vars) == names and names
    for name in names:
        np.testing.assert_array_equal(ds[name].values, node[name][:], err_msg=name)
    assert ds["trajectory"].values.tolist() == [0, 1]
    if group == "unet":
        assert ds.sizes["timestep"] == 2 and ds["timestep"].values.tolist() == node["timestep"][:].tolist()


@pytest.mark.parametrize("group", GROUPS, ids=str)
def test_an_absent_chunk_file_of_a_complete_trajectory_is_refused(features, group):
    array = _first_entry_array(features, group)
    key = store.chunk_keys(array, 1)[0]
    (features / key).unlink()
    assert not xr.open_zarr(features, group=group)[array.basename].isel(trajectory=1).values.any()  # zarr: zeros

    with pytest.raises(store.CorruptStoreError) as raised:
        open_dataset(features, group)
    message = str(raised.value)
    assert f"{features}: trajectory 1 of `{array.path}` has no chunk file {key}" in message
    assert f"diffsketch inspect --repair {features}" in message and "\n" not in message


@pytest.mark.parametrize("group", GROUPS, ids=str)
def test_an_incomplete_trajectory_is_left_out(features, group):
    _clear(features, 0)  # the first: the kept one is then not at its own position
    ds = open_dataset(features, group)  # its absent files are not damage: it was never written
    name = _first_entry_array(features, group).basename
    assert ds.sizes["trajectory"] == 1 and ds["trajectory"].values.tolist() == [1]
    np.testing.assert_array_equal(ds[name].values, _node(features, group)[name][1:2])
    np.testing.assert_array_equal(ds[name].sel(trajectory=1).values, _node(features, group)[name][1])
    if group is None:
        assert ds["complete"].values.all()
    assert not xr.open_zarr(features, group=group)[name].isel(trajectory=0).values.any()  # what it would have shown


def test_a_changed_chunk_fails_when_read(features):
    """Present but changed: nothing is decoded when opening; reading it fails its checksum in zarr."""
    array = _first_entry_array(features, "unet")
    shard = features / store.chunk_keys(array, 1)[0]
    data = bytearray(shard.read_bytes())
    data[40:48] = bytes(b ^ 0x5A for b in data[40:48])
    shard.write_bytes(bytes(data))
    ds = open_dataset(features, "unet")
    assert ds[array.basename].isel(trajectory=0).values.shape[0] == 2  # the others read
    with pytest.raises(ValueError, match="checksum"):
        ds[array.basename].load()


def test_a_store_at_a_url_is_checked_by_listing(sampled):  # noqa: F811
    fsspec = pytest.importorskip("fsspec")
    _, path = sampled
    memory = fsspec.filesystem("memory")
    memory.put(str(path), "/xarray-view.zarr", recursive=True)
    try:
        url = "memory://xarray-view.zarr"
        assert open_dataset(url, "vae")["trajectory"].values.tolist() == [0, 1]
        key = store.chunk_keys(_first_entry_array(path, "vae"), 1)[0]
        memory.rm(f"/xarray-view.zarr/{key}")
        with pytest.raises(store.CorruptStoreError, match=rf"{url}: trajectory 1 of `vae/\w+` has no chunk file {key}"):
            open_dataset(url, "vae")
    finally:
        memory.rm("/xarray-view.zarr", recursive=True)


def test_a_pairs_store_opens_along_pair(tmp_path):
    from test_resilience import make_pairs

    pairs = make_pairs(tmp_path / "pairs.zarr", count=3)
    zarr.open_group(str(pairs), mode="r+").attrs["fingerprint"] = "test"  # as `diffsketch pairs` finishes it
    assert open_dataset(pairs)["sketches"].dims == ("pair", "pixel_y", "pixel_x")
    (pairs / "sketches" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(store.CorruptStoreError, match=r"pair 2 of `sketches` has no chunk file sketches/c/2/0/0.*diffsketch pairs"):
        open_dataset(pairs)
    zarr.open_group(str(pairs), mode="r+")["complete"][2] = False
    assert open_dataset(pairs)["pair"].values.tolist() == [0, 1]


def test_clear_errors_before_any_data(features, tmp_path):
    with pytest.raises(store.StoreError, match="is not a diffsketch feature store"):
        open_dataset(tmp_path / "nothing.zarr")
    with pytest.raises(store.StoreError, match=r"has no group `unet2` \(its groups: unet, vae\)"):
        open_dataset(features, "unet2")
    (features / "zarr.json").write_text("{")
    with pytest.raises(store.StoreError, match="metadata .* is damaged.*inspect --repair"):
        open_dataset(features, "unet")


def test_a_store_without_dimension_names_names_the_fix(features):
    from test_xarray import _strip_to_old_layout

    _strip_to_old_layout(features)
    with pytest.raises(store.StoreError, match=r"without Zarr dimension names .*`--overwrite` \(`diffsketch sample`"):
        open_dataset(features, "unet")


@pytest.mark.parametrize("group", ["unet", "vae"])
def test_features_stored_with_an_exponent_come_back_as_sampled(features, group):
    """A layer stored divided by 2**e in some rows (as `sample` stores features beyond float16) opens
    multiplied back; the other layers stay as stored."""
    root = zarr.open_group(str(features), mode="r+")
    layer, other = root[store.exponent_array(group)].attrs["layers"][:2]
    original = root[f"{group}/{layer}"][...].astype(np.float32)
    with store.writing():  # arrays opened inside: all-zero chunks are written, not deleted
        exponents = root[store.exponent_array(group)]
        e = exponents[1]
        e[..., 0] = 3  # trajectory 1 (all its timesteps for the UNet) of the first layer
        exponents[1] = e
        root[f"{group}/{layer}"][1] = (original[1] / 8).astype(np.float16)
    ds = open_dataset(features, group)
    np.testing.assert_allclose(ds[layer].values, original, rtol=1e-3, atol=1e-3)
    assert ds[layer].dims == tuple(root[f"{group}/{layer}"].metadata.dimension_names)
    assert ds[other].dtype == np.float16
    np.testing.assert_array_equal(ds[other].values, root[f"{group}/{other}"][...])
    _clear(features, 0)  # left out: the remaining trajectory 1 keeps its own exponents
    ds = open_dataset(features, group)
    assert ds["trajectory"].values.tolist() == [1]
    np.testing.assert_allclose(ds[layer].values, original[1:], rtol=1e-3, atol=1e-3)
