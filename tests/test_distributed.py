"""`sample` and `pairs` split over 2 CPU processes (torchrun, gloo) equal the single-process result."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import zarr

from conftest import REPO, assert_same_stores, free_port
from diffsketch.store import zarr_store as store
from diffsketch.core.distributed import Workers

pytestmark = pytest.mark.slow


def _env():
    # one thread per process: two processes share the 2 cores
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _launch(nproc, *args, launcher="torchrun"):
    """`torchrun --nproc_per_node N -m diffsketch ...` (or the README's `accelerate launch` form) as a list of arguments."""
    if launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port())]  # fmt: skip
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]  # fmt: skip
    return [*head, "-m", "diffsketch", *map(str, args)]


def _single(*args):
    return [sys.executable, "-m", "diffsketch", *map(str, args)]


def _params(tmp_path, prompts_dir, trajectories, steps):
    path = tmp_path / "params.yaml"
    path.write_text(
        f"model: {{id: tiny, device: cpu}}\nsample: {{prompts: {prompts_dir}, trajectories: {trajectories}, steps: {steps}, "
        "resolution: 64, pool: 1, batch_size: 2}\n"
    )
    return path


def test_share_is_contiguous_and_complete():
    items = list(range(10))
    shares = [Workers(rank=r, world=3).share(items) for r in range(3)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert Workers().share(items) == items and Workers(rank=3, world=4).share([1, 2]) == []


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_write_the_single_process_store(prompts_dir, tmp_path, launcher):
    params = _params(tmp_path, prompts_dir, trajectories=5, steps=3)  # 3 blocks of 2: one process gets 2, one gets 1
    run = subprocess.run(_launch(2, "sample", "-p", params, "-o", tmp_path / "two.zarr", "--no-progress", launcher=launcher),
                         env=_env(), capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    shares = {int(rank): int(n) for rank, n in re.findall(r"worker (\d) of 2 takes (\d+) trajectories", run.stderr)}
    assert shares == {0: 4, 1: 1}, run.stderr  # blocks [0, 1] [2, 3] | [4]: the work was split, not repeated
    subprocess.run(_single("sample", "-p", params, "-o", tmp_path / "one.zarr", "--no-progress"), env=_env(), check=True, capture_output=True)
    assert_same_stores(tmp_path / "one.zarr", tmp_path / "two.zarr")
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="r")
    assert dict(two.attrs) == dict(zarr.open_group(str(tmp_path / "one.zarr"), mode="r").attrs)
    assert store.complete_mask(two).all()
    consolidated = two.metadata.consolidated_metadata  # written by the final step
    assert consolidated is not None and "unet/up3_res2" in consolidated.flattened_metadata


def test_two_processes_killed_part_way_resume(prompts_dir, tmp_path):
    params = _params(tmp_path, prompts_dir, trajectories=8, steps=30)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_launch(2, "sample", "-p", params, "-o", out, "--no-progress"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline, done = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None and done < 2:
        try:
            done = int(store.complete_mask(store.open_store(out)).sum())
        except Exception:
            done = 0
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    partial = int(store.complete_mask(store.open_store(out)).sum())
    assert 2 <= partial < 8, "the kill should land part-way"
    run = subprocess.run(_launch(2, "sample", "-p", params, "-o", out, "--no-progress"), env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    subprocess.run(_single("sample", "-p", params, "-o", tmp_path / "clean.zarr", "--no-progress"), env=_env(), check=True, capture_output=True)
    assert_same_stores(tmp_path / "clean.zarr", out)


def test_pairs_stage_relaunches_itself_over_two_processes(teacher, tmp_path):
    """`launch.processes: 2` makes the pairs stage script run under torchrun; the pairs equal one process's."""
    import shutil

    from diffsketch.student.pairs import open_pairs

    settings = {"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 5, "batch_size": 2}}
    stores = {}
    for processes in (2, 1):
        folder = tmp_path / f"run{processes}"
        (folder / "models").mkdir(parents=True)
        for source in teacher[0].parent.glob("*.*"):  # generator.safetensors + .json, prior.safetensors
            if source.name.startswith(("generator.", "prior.")):
                shutil.copy(source, folder / "models" / source.name)
        launch = {"processes": processes, "args": ["--master_port", str(free_port())]}
        (folder / "params.yaml").write_text(json.dumps({**settings, "launch": launch}))
        run = subprocess.run([sys.executable, str(REPO / "stages" / "pairs.py")], cwd=folder, env=_env(), capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        shares = {int(rank): int(n) for rank, n in re.findall(r"worker (\d) of 2 takes (\d+) pairs", run.stderr)}
        assert shares == ({0: 4, 1: 1} if processes == 2 else {}), run.stderr
        stores[processes] = open_pairs(folder / "data" / "pairs.zarr")
    assert stores[2]["complete"][:].all()
    for name in ("images", "sketches", "seeds", "complete"):
        assert (stores[2][name][:] == stores[1][name][:]).all(), name
