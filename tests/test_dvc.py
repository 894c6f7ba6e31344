"""End to end: `dvc repro` of the project's pipeline in a fresh git + DVC repo."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(args, cwd):
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # `python` = this venv
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _dvc(*args, cwd):
    return _run([str(Path(sys.executable).parent / "dvc"), *args], cwd)


def _set(repo, section, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_and_param_granularity(repo_copy):
    repo = repo_copy
    for key, value in dict(trajectories=3, steps=3, resolution=64, pool=1).items():
        _set(repo, "sample", key, value)
    _run(["git", "init", "-q"], repo)
    _dvc("init", "-q", cwd=repo)
    _dvc("repro", cwd=repo)
    assert (repo / "dvc.lock").is_file()
    from diffsketch import store

    assert store.complete_mask(store.open_store(repo / "data" / "features.zarr")).sum() == 3
    status = json.loads(_dvc("status", "--json", cwd=repo))
    assert status == {}

    _set(repo, "analyze", "k_max", 7)  # a param `sample` does not read
    assert json.loads(_dvc("status", "--json", cwd=repo)) == {}
    assert "Running stage 'sample'" not in _dvc("repro", cwd=repo)
    assert json.loads(_dvc("status", "--json", cwd=repo)) == {}

    _set(repo, "sample", "steps", 2)  # a param it does read
    status = json.loads(_dvc("status", "--json", cwd=repo))
    assert "sample" in status
    assert {"changed deps": {"params.yaml": {"sample.steps": "modified"}}} in status["sample"]
    _dvc("repro", cwd=repo)
    assert store.open_store(repo / "data" / "features.zarr")["timesteps"].shape == (2,)
