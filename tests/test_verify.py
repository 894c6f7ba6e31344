"""Verify and repair (issue 17): `inspect --verify` lists every missing or corrupt chunk of the completed
entries, `--repair` makes the next run redo exactly them, and readers name the damage instead of
raising a zarr traceback."""

import shutil

import pytest
from typer.testing import CliRunner

from conftest import assert_same_stores, record_writes, small_params
from diffsketch.store import zarr_store as store
from diffsketch.store import integrity as verify
from diffsketch.cli.main import app
from diffsketch.store.collect import run_sample

runner = CliRunner()


def _cut(path) -> None:
    """Truncate a chunk file to half its length (a partial copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble(path, at: int = 40) -> None:
    """Overwrite a few bytes in the middle of a chunk file (a bad disk block): its length is unchanged."""
    data = bytearray(path.read_bytes())
    data[at : at + 8] = bytes(b ^ 0x5A for b in data[at : at + 8])
    path.write_bytes(bytes(data))


def test_verify_lists_the_damage_and_repair_redoes_exactly_it(tiny, prompts_dir, tmp_path, monkeypatch):
    params = small_params(prompts_dir, trajectories=4, steps=2)  # batches [0, 1] and [2, 3]
    untouched = run_sample(params, tmp_path / "untouched.zarr", progress=False, model=tiny)
    assert verify.verify(untouched).ok

    damaged = tmp_path / "features.zarr"
    shutil.copytree(untouched, damaged)
    shard = damaged / "unet" / "up3_res2" / "c" / "2" / "0" / "0" / "0" / "0" / "0"  # trajectory 2's two timesteps
    _scramble(shard)
    _cut(damaged / "images" / "c" / "3" / "0" / "0" / "0")
    (damaged / "vae" / "mid_res0" / "c" / "3" / "0" / "0" / "0").unlink()

    result = runner.invoke(app, ["inspect", "--verify", "--no-progress", str(damaged)])
    assert result.exit_code == 1, result.output
    lines = [line.split() for line in result.output.splitlines() if line.startswith("  trajectory")]
    assert [(int(w[1]), w[2], w[3]) for w in lines] == [
        (2, "unet/up3_res2", "corrupt:"), (3, "images", "corrupt:"), (3, "vae/mid_res0", "missing:"),
    ], result.output  # fmt: skip
    assert "verified     4 complete trajectories" in result.output and "--repair" in result.output
    assert "Traceback" not in result.output
    assert store.complete_mask(store.open_store(damaged)).all()  # --verify changes nothing

    result = runner.invoke(app, ["inspect", "--repair", "--no-progress", str(damaged)])
    assert result.exit_code == 0, result.output
    assert "completion flag cleared for trajectories [2, 3]" in result.output
    assert store.complete_mask(store.open_store(damaged)).tolist() == [True, True, False, False]

    writes = record_writes(monkeypatch)
    run_sample(params, damaged, progress=False, model=tiny)
    assert writes == [[2, 3]]  # exactly the damaged trajectories, nothing else rewritten
    assert verify.verify(damaged).ok
    assert_same_stores(untouched, damaged)


def _pairs(tmp_path, count=4):
    from test_resilience import make_pairs

    return make_pairs(tmp_path / "pairs.zarr", count=count)


def test_pairs_store_damage_and_whole_store_arrays(tmp_path):
    pairs = _pairs(tmp_path)
    _scramble(pairs / "sketches" / "c" / "1" / "0" / "0")
    (pairs / "complete" / "c" / "2").write_bytes(b"\x00garbage")  # the completion flag itself
    result = verify.verify(pairs)
    assert result.kind == "pair" and result.entries == 4
    assert [(p.entry, p.array, p.kind) for p in result.problems] == [(1, "sketches", "corrupt"), (2, "complete", "corrupt")]
    assert verify.repair(result) == [1, 2]
    assert store.complete_mask(store.open_group(pairs)).tolist() == [True, False, False, True]
    assert verify.verify(pairs).ok  # what is left complete reads back

    (pairs / "seeds" / "c" / "0").write_bytes(b"\x00garbage")  # written once for the whole store
    result = runner.invoke(app, ["inspect", "--repair", "--no-progress", str(pairs)])
    assert result.exit_code == 1 and "whole store" in result.output and "diffsketch pairs --overwrite" in result.output
    assert "Traceback" not in result.output


def test_analyze_names_a_corrupt_chunk_and_the_verify_command(tmp_path):
    from test_analysis import synthetic_store

    features = synthetic_store(tmp_path / "s.zarr")  # its images are all zeros: written all the same
    assert verify.verify(features).ok
    _cut(features / "unet" / "up3_res0" / "c" / "5" / "0" / "0" / "0" / "0" / "0")
    params = tmp_path / "params.yaml"
    params.write_text("analyze: {pca_dims: 5, k_min: 2, k_max: 6, k: auto, feature_maps: 0}\n")  # no resampling
    folders = ["--results", str(tmp_path / "res"), "--timesteps", str(tmp_path / "t.json"), "--reports", str(tmp_path / "rep")]
    result = runner.invoke(app, ["analyze", "-p", str(params), "--store", str(features), "--no-progress", *folders])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert f"{features}: trajectory 5 of `unet/up3_res0` cannot be read" in result.output, result.output
    assert f"diffsketch inspect --verify {features}" in result.output
    assert not (tmp_path / "t.json").exists()


def test_distill_names_a_corrupt_pair_and_the_verify_command(tmp_path):
    pairs = _pairs(tmp_path, count=2)  # one training pair, one held out: both are read at once
    _cut(pairs / "images" / "c" / "0" / "0" / "0" / "0")
    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {id: tiny, device: cpu}\nlosses: {lpips_net: random}\n"
        "distill: {width: 8, downsamples: 2, blocks: 1, iterations: 2, batch: 1, crop: 24, lpips: 0, gan: 0}\n"
    )
    out = ["--out", str(tmp_path / "s.safetensors"), "--live", str(tmp_path / "live"), "--checkpoints", str(tmp_path / "ck")]
    result = runner.invoke(app, ["distill", "-p", str(params), "--pairs", str(pairs), "--no-progress", *out])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert f"{pairs}: pair 0 of `images` cannot be read" in result.output, result.output
    assert f"diffsketch inspect --verify {pairs}" in result.output
    assert not (tmp_path / "s.safetensors").exists()


def test_a_damaged_completion_flag_names_the_verify_command(tmp_path):
    pairs = _pairs(tmp_path, count=3)
    (pairs / "complete" / "c" / "1").write_bytes(b"\x00garbage")
    with pytest.raises(store.CorruptStoreError, match=rf"{pairs}: array `complete` cannot be read.*inspect --verify"):
        store.complete_mask(store.open_group(pairs))
    assert verify.repair(verify.verify(pairs)) == [1]
    assert store.complete_mask(store.open_group(pairs)).tolist() == [True, False, True]


def _analyze(tmp_path, features):
    params = tmp_path / "params.yaml"
    params.write_text("analyze: {pca_dims: 5, k_min: 2, k_max: 6, k: auto, feature_maps: 0}\n")  # no resampling
    folders = ["--results", str(tmp_path / "res"), "--timesteps", str(tmp_path / "t.json"), "--reports", str(tmp_path / "rep")]
    return runner.invoke(app, ["analyze", "-p", str(params), "--store", str(features), "--no-progress", *folders])


def test_analyze_refuses_a_deleted_unet_chunk_file(tmp_path):
    from test_analysis import synthetic_store

    features = synthetic_store(tmp_path / "s.zarr")
    (features / "unet" / "up0_res0" / "c" / "7" / "0" / "0" / "0" / "0" / "0").unlink()  # zarr reads it as zeros
    result = _analyze(tmp_path, features)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert f"{features}: trajectory 7 of `unet/up0_res0` has no chunk file unet/up0_res0/c/7/0/0/0/0/0" in result.output
    assert f"diffsketch inspect --verify {features}" in result.output
    assert not (tmp_path / "t.json").exists()


def test_readers_refuse_absent_chunks(tmp_path):
    from diffsketch.analysis.feature_maps import final_image
    from diffsketch.student.distill import PairSampler
    from test_analysis import synthetic_store

    features = synthetic_store(tmp_path / "s.zarr", trajectories=4)
    root = store.open_store(features)
    assert root.attrs["fingerprint"]  # opened before the damage, as a long-running reader would be
    (features / "images" / "c" / "2" / "0" / "0" / "0").unlink()
    with pytest.raises(store.CorruptStoreError, match="trajectory 2 of `images` has no chunk file images/c/2/0/0/0"):
        final_image(root, 2, 8)
    assert final_image(root, 1, 8).shape == (8, 8, 3)  # the others read
    (features / "noise" / "c" / "3" / "0" / "0" / "0").unlink()
    with pytest.raises(store.CorruptStoreError, match="trajectory 3 of `noise` has no chunk file noise/c/3/0/0/0"):
        store.read(root["noise"], 3)

    pairs = _pairs(tmp_path, count=3)
    (pairs / "sketches" / "c" / "1" / "0" / "0").unlink()
    sampler = PairSampler(store.open_group(pairs), holdout=0.0, crop=None, seed=0)
    with pytest.raises(store.CorruptStoreError, match=rf"{pairs}: pair 1 of `sketches` has no chunk file sketches/c/1/0/0"):
        sampler.load([0, 1])


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
    """A finished tiny store (2 trajectories, 2 steps) and its params, sampled once for the module."""
    folder = tmp_path_factory.mktemp("sampled")
    prompts = folder / "prompts"
    prompts.mkdir()
    (prompts / "a.txt").write_text("a red bicycle\na cat on a sofa\n")
    params = small_params(prompts, trajectories=2, steps=2, batch_size=1)
    return params, run_sample(params, folder / "features.zarr", progress=False, model=tiny)


def _copy(sampled, tmp_path):
    params, untouched = sampled
    damaged = tmp_path / "features.zarr"
    shutil.copytree(untouched, damaged)
    return params, untouched, damaged


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
def test_repair_removes_a_damaged_shard_so_that_sample_rewrites_it(sampled, tiny, tmp_path, damage):
    params, untouched, damaged = _copy(sampled, tmp_path)
    shard = damaged / "unet" / "up3_res2" / "c" / "1" / "0" / "0" / "0" / "0" / "0"
    if damage == "garbage":
        shard.write_bytes(b"garbage")  # 7 bytes
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:
        shard.unlink()
    result = runner.invoke(app, ["inspect", "--repair", "--no-progress", str(damaged)])
    assert result.exit_code == 0 and "completion flag cleared for trajectories [1]" in result.output, result.output
    assert not shard.exists()  # a rerun reads nothing of the damaged trajectory
    run_sample(params, damaged, progress=False, model=tiny)
    assert runner.invoke(app, ["inspect", "--verify", "--no-progress", str(damaged)]).exit_code == 0
    assert_same_stores(untouched, damaged)


@pytest.mark.parametrize("document", ["unet/up3_res2/zarr.json", "zarr.json"])
def test_truncated_metadata_is_found_named_and_rebuilt(sampled, tiny, tmp_path, document):
    params, untouched, damaged = _copy(sampled, tmp_path)
    target = damaged / document
    target.write_bytes(target.read_bytes()[:200])

    result = runner.invoke(app, ["inspect", "--verify", "--no-progress", str(damaged)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"  metadata         {document}" in result.output and "not valid" in result.output
    assert f"diffsketch inspect --repair {damaged}" in result.output
    if document == "zarr.json":  # every stage opening it: one line naming the repair
        with pytest.raises(store.StoreError, match=rf"{damaged}: the store's metadata .* is damaged .*inspect --repair"):
            store.open_store(damaged)

    result = runner.invoke(app, ["inspect", "--repair", "--no-progress", str(damaged)])
    assert result.exit_code == 0 and f"metadata rebuilt from the store's copies: {document}" in result.output, result.output
    run_sample(params, damaged, progress=False, model=tiny)
    assert runner.invoke(app, ["inspect", "--verify", "--no-progress", str(damaged)]).exit_code == 0
    assert_same_stores(untouched, damaged)
    measured = {"projected_bytes"}  # a projection measured when the run finishes, not a setting
    attrs = lambda path: {k: v for k, v in store.open_store(path).attrs.asdict().items() if k not in measured}  # noqa: E731
    assert attrs(damaged) == attrs(untouched)


def test_metadata_without_a_copy_names_the_command_that_recreates_the_store(sampled, tmp_path):
    _, _, damaged = _copy(sampled, tmp_path)
    for document in ("zarr.json", "complete/zarr.json"):  # the root and the copy of its attributes
        (damaged / document).write_text("{")
    result = runner.invoke(app, ["inspect", "--repair", "--no-progress", str(damaged)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "no copy is kept to rebuild complete/zarr.json, zarr.json from" in result.output
    assert "make the store again (`diffsketch sample --overwrite`)" in result.output


def test_pairs_store_metadata_rebuilt_and_named_by_the_readers(tmp_path):
    from diffsketch.student.pairs import PairsError, open_pairs

    pairs = _pairs(tmp_path, count=2)
    (pairs / "sketches" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [')
    result = verify.verify(pairs)
    assert [(p.array, p.kind) for p in result.problems] == [("sketches/zarr.json", "metadata")]
    assert result.problems[0].detail.startswith("not valid (JSONDecodeError")
    assert verify.repair(result) == [] and result.rebuilt == ["sketches/zarr.json"]
    assert verify.verify(pairs).ok and open_pairs(pairs)["sketches"].shape == (2, 32, 32)

    (pairs / "zarr.json").write_text("{")  # the root: stages answer with one line naming the repair
    with pytest.raises(PairsError, match=rf"pairs store {pairs} is damaged \(JSONDecodeError: .*inspect --repair"):
        open_pairs(pairs)
    result = verify.verify(pairs)
    assert result.kind == "pair" and [p.array for p in result.problems] == ["zarr.json"]
    verify.repair(result)
    assert verify.verify(pairs).ok and open_pairs(pairs).attrs["seed"] == 0
