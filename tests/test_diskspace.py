"""Disk space (issue 17): `sample` and `pairs` project the store's size and refuse to start when the
disk is short (unless --force); a disk that fills up mid-run stops cleanly and the store resumes."""

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from conftest import REPO, assert_same_stores, record_writes, small_params, store_arrays
from diffsketch.store import diskspace
from diffsketch.store import zarr_store as store
from diffsketch.store.collect import run_sample

SETTINGS = dict(trajectories=4, steps=2, batch_size=2)  # batches [0, 1] and [2, 3]
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    (folder / "animals.txt").write_text("a horse in mud\na cat on a sofa\n")
    (folder / "food.txt").write_text("a bowl of ramen\na slice of pizza\n")
    return folder


@pytest.fixture(scope="module")
def reference(tiny, prompts, tmp_path_factory):
    """An uninterrupted store of SETTINGS, for the interrupted ones to be compared with."""
    return run_sample(small_params(prompts, **SETTINGS), tmp_path_factory.mktemp("ref") / "ref.zarr", progress=False, model=tiny)


def _short_disk(monkeypatch, free: int) -> None:
    """Make every filesystem report ``free`` bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def _file_bytes(path) -> int:
    """Bytes of the chunk files of a store (metadata left out), counted straight from the filesystem."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files if f != "zarr.json")


def test_projection_refusal_force_and_measured_compression(tiny, prompts, reference, tmp_path, monkeypatch, caplog):
    params = small_params(prompts, **SETTINGS)
    n = SETTINGS["trajectories"]
    # the oracle: a finished store's per-trajectory arrays as numpy arrays, their bytes per trajectory
    arrays = store_arrays(reference)
    per_trajectory = sum(a.nbytes for key, a in arrays.items() if a.shape[:1] == (n,)) // n
    assert per_trajectory > 10_000  # images alone are 64 * 64 * 3

    out = tmp_path / "features.zarr"
    _short_disk(monkeypatch, free=per_trajectory * n - 1)  # one byte short of the uncompressed chunks alone
    with pytest.raises(diskspace.DiskSpaceError) as refused:
        run_sample(params, out, progress=False, model=tiny)
    message = str(refused.value)
    assert str(out) in message and f"{n} trajectories still to write need about" in message, message
    for fix in ("sample.pool", "sample.trajectories", "another disk", "bucket", "--force"):
        assert fix in message, fix
    assert not out.exists()  # refused before anything was written

    # --force starts anyway (and warns); interrupted after the first batch
    record_writes(monkeypatch, interrupt_at=2)
    with caplog.at_level(logging.INFO, logger="diffsketch.store.diskspace"), pytest.raises(KeyboardInterrupt):
        run_sample(params, out, progress=False, model=tiny, force=True)
    assert "--force: starting anyway" in caplog.text
    assert "projected size on disk" in caplog.text and f"({n} trajectories x" in caplog.text, caplog.text
    assert "chunks counted uncompressed" in caplog.text and "compression" not in caplog.text
    monkeypatch.undo()

    # resuming: projected from the chunk files of the 2 written trajectories, which predicts what the
    # finished store takes on disk (`du`, within the spread between trajectories)
    root = store.open_store(out)
    assert store.complete_mask(root).tolist() == [True, True, False, False]
    resumed = diskspace.projected_size(out, root, done=2)
    assert resumed.entry_bytes == per_trajectory and resumed.measured == 2 and 0.5 < resumed.ratio < 1.5
    run_sample(params, out, progress=False, model=tiny)
    assert resumed.total_bytes == pytest.approx(_du(out), rel=0.15)
    assert_same_stores(reference, out)


def _du(path) -> int:
    """What the store takes on disk, as `du` counts it (allocated blocks of its files and folders)."""
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def test_projected_bytes_of_a_finished_store_match_du(reference):
    """The projection a finished sample records holds on this filesystem: ``du`` within 15 %."""
    projected = store.open_store(reference).attrs["projected_bytes"]
    assert projected == pytest.approx(_du(reference), rel=0.15)


def test_projection_counts_blocks_and_folders(tmp_path):
    """A pairs store of 3 pairs of 64 px, uncompressed, on a filesystem of 4096-byte blocks and folders,
    counted by hand: each pair writes an image (12288 bytes: 3 blocks), a sketch (4096 bytes: 1 block)
    and its flag (1 block) in 5 folders of its own (images/c/i, images/c/i/0, images/c/i/0/0,
    sketches/c/i, sketches/c/i/0)."""
    from diffsketch.student.pairs import _create_arrays

    layout = store.scratch_group()
    _create_arrays(layout, 3, 64)
    fs = diskspace.Filesystem(block=4096, folder=4096)
    projection = diskspace.projected_size(tmp_path / "pairs.zarr", layout, 0, fs=fs)
    assert (projection.entry_files, projection.entry_folders) == (3, 5)
    assert projection.stored_entry_bytes == (3 + 1 + 1 + 5) * 4096
    assert projection.ratio is None and projection.remaining_bytes == projection.total_bytes
    # once: the store, 4 array folders and their 4 c/ folders; seeds (one block); 4 arrays' metadata (one
    # block each, at METADATA_BYTES = 1500) and the root's, which holds all 4 consolidated (7500 bytes: 2 blocks)
    assert projection.fixed_bytes == (1 + 4 + 4) * 4096 + 4096 + 4 * 4096 + 2 * 4096
    assert projection.total_bytes == projection.fixed_bytes + 3 * 10 * 4096
    assert diskspace.Filesystem(block=1, folder=0) == diskspace.Filesystem.of("memory://x.zarr")  # remote: bytes alone


def test_pairs_refuse_before_loading_the_model(teacher, tmp_path, monkeypatch):
    from diffsketch.student import pairs
    from diffsketch.core.params import parse_params

    params = parse_params({"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 3, "batch_size": 1}})
    monkeypatch.setattr(pairs, "load_model", lambda *a: pytest.fail("the space check must come before the model"))
    _short_disk(monkeypatch, free=1000)
    with pytest.raises(diskspace.DiskSpaceError, match=r"3 pairs still to write need about .*pairs\.count.*--force"):
        pairs.run_pairs(params, *teacher, tmp_path / "pairs.zarr", progress=False)
    monkeypatch.undo()

    # with the space: the finished store records a projection that `du` confirms
    out = pairs.run_pairs(params, *teacher, tmp_path / "pairs.zarr", progress=False)
    assert store.open_group(out).attrs["projected_bytes"] == pytest.approx(_du(out), rel=0.15)


def test_force_option_reaches_sample_and_pairs(monkeypatch, tmp_path):
    from diffsketch.store import collect
    from diffsketch.student import pairs
    from diffsketch.cli.main import app

    seen = {}
    monkeypatch.setattr(collect, "run_sample", lambda *a, **k: seen.setdefault("sample", k["force"]))
    monkeypatch.setattr(pairs, "run_pairs", lambda *a, **k: seen.setdefault("pairs", k["force"]))
    params = tmp_path / "params.yaml"
    params.write_text("model: {id: tiny}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["sample", "-p", str(params), "--force"]).exit_code == 0
    assert runner.invoke(app, ["pairs", "-p", str(params)]).exit_code == 0
    assert seen == {"sample": True, "pairs": False}


# `diffsketch sample` in a real subprocess whose disk is full from trajectory FIRST_FULL on: every
# chunk write of it fails with ENOSPC, as the local store's write would on a full filesystem.
FULL_DISK = """
import errno, os, re, sys
import zarr.storage
from diffsketch.cli.main import app
first_full, real = int(sys.argv[1]), zarr.storage.LocalStore.set
async def full(self, key, value, *args, **kwargs):
    entry = re.search(r"/c/(\\d+)", key)
    if entry and int(entry.group(1)) >= first_full:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
    return await real(self, key, value, *args, **kwargs)
zarr.storage.LocalStore.set = full
app(sys.argv[2:])
"""


def _full_from(monkeypatch, first_full: int) -> None:
    """The same full disk, in this process."""
    import re

    real = zarr.storage.LocalStore.set

    async def full(self, key, value, *args, **kwargs):
        entry = re.search(r"/c/(\d+)", key)
        if entry and int(entry.group(1)) >= first_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        return await real(self, key, value, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)


def test_full_disk_mid_run_stops_cleanly_and_resumes(tiny, prompts, reference, tmp_path):
    params = small_params(prompts, **SETTINGS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    out = tmp_path / "features.zarr"
    cli = ["sample", "-p", str(tmp_path / "params.yaml"), "-o", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", FULL_DISK, "3", *cli], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    error = run.stderr[run.stderr.index("error: ") :]
    assert str(out) in error and "the disk is full" in error and "free" in error, error
    assert "No space left on device" in error and "rerun the same command" in error and "resumes" in error, error
    assert store.complete_mask(store.open_store(out)).tolist() == [True, True, False, False]
    assert not (tmp_path / "features.zarr.lock").exists()  # the lock was released on the way out

    run_sample(params, out, progress=False, model=tiny)  # space freed: the rerun finishes it
    assert_same_stores(reference, out)


def test_full_disk_in_the_background_writer(tiny, prompts, reference, tmp_path, monkeypatch):
    """On an accelerator the store is written by a background thread: its ENOSPC surfaces the same way."""
    import threading

    params = small_params(prompts, **SETTINGS)
    used = []

    class Background(store.BatchWriter):
        def __init__(self, root, background=True):
            super().__init__(root, background=True)
            used.append(True)

    monkeypatch.setattr(store, "BatchWriter", Background)
    _full_from(monkeypatch, 3)
    out = tmp_path / "features.zarr"
    with pytest.raises(diskspace.DiskFullError, match="the disk is full.*No space left on device.*resumes"):
        run_sample(params, out, progress=False, model=tiny)
    assert used and not [t for t in threading.enumerate() if t.name.startswith("zarr-writer")]  # waited for, shut down
    assert store.complete_mask(store.open_store(out)).tolist() == [True, True, False, False]
    monkeypatch.undo()
    run_sample(params, out, progress=False, model=tiny)
    assert_same_stores(reference, out)
    assert np.array_equal(store_arrays(out)["complete"], [True] * 4)
