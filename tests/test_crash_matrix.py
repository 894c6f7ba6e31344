"""The crash matrix: every stage that writes (sample, analyze, train, pairs, distill, evaluate) is
killed with SIGKILL at a seeded random moment, run again with the same command, and compared with
the uninterrupted run of the reproduced smoke pipeline.

Each stage runs as DVC runs it (its ``stages/<name>.py`` script with the ``cmd:`` arguments of
``dvc.yaml``) in a copy of the reproduced pipeline whose outputs of that stage are removed. The
process kills itself at the k-th call of a function the stage calls many times (a chunk written to
the store, a tensor's backward pass, a store read, an image saved), k drawn from a seeded generator
between 1 and a number of calls the stage is sure to make. One kill point per stage by default;
``DIFFSKETCH_CRASH_POINTS=N`` runs N (seeds 0..N-1) and ``DIFFSKETCH_CRASH_SEED`` shifts them.

What must equal the uninterrupted run, and how:

- ``sample``, ``pairs``: every array of the store, bit for bit (resumed stores are bit-identical);
- ``train``, ``distill``: every tensor of the saved model, bit for bit (resume restores the weights,
  optimiser state and random generators from the last checkpoint);
- ``analyze``: ``timesteps.json`` byte for byte and every array of ``analysis.npz`` exactly (it is
  recomputed from the store); the report is left out, as it holds the time the PCA took;
- ``evaluate``: ``metrics.json`` and ``comparison.json`` equal within 1e-6 relative (the scores
  are recomputed; the report's timings are left out).
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import assert_same_stores

pytestmark = pytest.mark.slow

POINTS = int(os.environ.get("DIFFSKETCH_CRASH_POINTS", "1"))
SEED = int(os.environ.get("DIFFSKETCH_CRASH_SEED", "0"))

# Runs a stage script as DVC would, SIGKILLing the process at call `at` of `target` (module:attribute).
RUNNER = """
import asyncio, importlib, os, runpy, signal, sys
target, at, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module, _, attribute = target.partition(":")
owner = importlib.import_module(module)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
real, calls = getattr(owner, name), [0]
def tick():
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
if asyncio.iscoroutinefunction(real):
    async def hooked(*args, **kwargs):
        tick()
        return await real(*args, **kwargs)
else:
    def hooked(*args, **kwargs):
        tick()
        return real(*args, **kwargs)
setattr(owner, name, hooked)
sys.argv = [script, *sys.argv[4:]]
import atexit
atexit.register(lambda: print(f"crash-matrix calls: {calls[0]}", file=sys.stderr))
runpy.run_path(script, run_name="__main__")
"""

# stage: (what it is killed in, calls it makes for sure on the smoke pipeline's params)
KILL_IN = {  # the smoke pipeline makes 192, 187, 2, 33, 3 and 20 such calls
    "sample": ("zarr.storage:LocalStore.set", 180),  # store files written (creation, then trajectories)
    "analyze": ("diffsketch.store.zarr_store:read", 180),  # store reads (every PCA pass reads each trajectory)
    "train": ("torch:Tensor.backward", 2),  # training steps
    "pairs": ("zarr.storage:LocalStore.set", 30),
    "distill": ("torch:Tensor.backward", 3),
    "evaluate": ("PIL.Image:Image.save", 18),  # the report's images
}


def _outs(repo, stage: str) -> list[str]:
    """The outputs of ``stage`` in the repo's dvc.yaml."""
    outs = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["outs"]
    return [next(iter(o)) if isinstance(o, dict) else o for o in outs]


def _command(repo, stage: str) -> list[str]:
    cmd = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["cmd"].split()
    assert cmd[0] == "python"
    return cmd[1:]


def _run(repo, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pipeline(reproduced_repo, tmp_path_factory):
    """One copy of the reproduced smoke pipeline for the module (the stages run in it one at a time)."""
    repo = tmp_path_factory.mktemp("crash") / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True, ignore=shutil.ignore_patterns(".dvc", ".git"))
    return repo


def _tensors(path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _same_tensors(a, b) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


def _same_json(a, b, rel: float = 0.0) -> None:
    def walk(x, y, where):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and isinstance(y, float) and rel:
            assert x == pytest.approx(y, rel=rel, nan_ok=True), where
        else:
            assert x == y, where

    walk(json.loads(a.read_text()), json.loads(b.read_text()), a.name)


def _compare(stage: str, ours, reference) -> None:
    """``ours`` (the killed-and-resumed repo's outputs) against ``reference`` (the uninterrupted run's)."""
    if stage in ("sample", "pairs"):
        name = "data/features.zarr" if stage == "sample" else "data/pairs.zarr"
        assert_same_stores(reference / name, ours / name)
    elif stage in ("train", "distill"):
        name = "models/generator.safetensors" if stage == "train" else "models/student.safetensors"
        _same_tensors(reference / name, ours / name)
    elif stage == "analyze":
        assert (ours / "data/timesteps.json").read_bytes() == (reference / "data/timesteps.json").read_bytes()
        a, b = np.load(ours / "data/analysis/analysis.npz"), np.load(reference / "data/analysis/analysis.npz")
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    else:
        for name in ("metrics.json", "comparison.json"):
            _same_json(ours / "reports/eval" / name, reference / "reports/eval" / name, rel=1e-6)


@pytest.mark.parametrize("point", range(POINTS))
@pytest.mark.parametrize("stage", list(KILL_IN))
def test_a_stage_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(pipeline, reproduced_repo, stage, point):
    target, calls = KILL_IN[stage]
    at = int(np.random.default_rng([SEED, point, list(KILL_IN).index(stage)]).integers(1, calls + 1))
    for out in _outs(pipeline, stage):
        path = pipeline / out
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    command = _command(pipeline, stage)

    killed = _run(pipeline, ["-c", RUNNER, target, str(at), *command])
    assert killed.returncode == -signal.SIGKILL, f"{stage} was not killed at call {at} of {target}:\n{killed.stderr[-3000:]}"
    resumed = _run(pipeline, command)
    assert resumed.returncode == 0, f"{stage} killed at call {at} of {target} did not resume:\n{resumed.stderr[-3000:]}"
    assert "Traceback" not in resumed.stderr
    _compare(stage, pipeline, reproduced_repo)
