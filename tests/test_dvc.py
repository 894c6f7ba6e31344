"""End to end: `dvc repro` of the project's pipeline in a fresh git + DVC repo."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import run_in

pytestmark = pytest.mark.slow


def _run(args, cwd):
    return run_in(args, cwd, stdout_only=True)


def _dvc(*args, cwd):
    return _run([str(Path(sys.executable).parent / "dvc"), *args], cwd)


def _set(repo, section, key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_dvc_repro_and_param_granularity(reproduced_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)  # TINY_PIPELINE params, `dvc repro` done and committed
    log = (reproduced_repo.parent / "repro.log").read_text()
    assert all(f"Running stage '{stage}'" in log for stage in ("sample", "analyze", "prior", "train", "pairs", "distill", "evaluate"))
    assert (repo / "dvc.lock").is_file()
    from diffsketch.store import zarr_store as store

    assert store.complete_mask(store.open_store(repo / "data" / "features.zarr")).sum() == 4
    timesteps = json.loads((repo / "data" / "timesteps.json").read_text())
    assert timesteps["steps"] == 4 and 2 <= timesteps["k"] <= 3
    assert (repo / "reports" / "analysis" / "index.html").is_file()
    assert (repo / "models" / "prior.safetensors").is_file()
    assert json.loads((repo / "models" / "generator.json").read_text())["meta"]["iterations"] == 2
    assert (repo / "reports" / "train" / "plots" / "images" / "samples" / "iter_000002.png").is_file()
    assert json.loads((repo / "models" / "student.json").read_text())["meta"]["pairs"] == 4
    assert json.loads(_dvc("status", "--json", cwd=repo)) == {}

    metrics = json.loads(_dvc("metrics", "show", "--json", cwd=repo))
    assert "k" in json.dumps(metrics) and "silhouette" in json.dumps(metrics)
    assert '"l1"' in json.dumps(metrics) and '"lpips"' in json.dumps(metrics)
    evaluation = metrics[""]["data"]["reports/eval/metrics.json"]["data"]
    assert evaluation["images"] == 2 and {"student", "canny", "sobel", "xdog", "lineart"} <= set(evaluation)
    assert set(evaluation["student"]) == {"ssim", "psnr", "chamfer", "f_score"} and "dog" not in evaluation
    assert (repo / "data" / "eval" / "LICENSES.md").is_file() and (repo / "reports" / "eval" / "index.html").is_file()
    _dvc("plots", "show", "-o", "plots_html", cwd=repo)
    page = (repo / "plots_html" / "index.html").read_text()
    assert "train/l1.tsv" in page and "iter_000002.png" in page
    assert "eval_ssim" in page and "eval_f_score" in page

    _set(repo, "evaluate", "size", 40)  # only the evaluation reads it
    assert set(json.loads(_dvc("status", "--json", cwd=repo))) == {"evaluate"}
    log = _dvc("repro", cwd=repo)
    assert "Running stage 'evaluate'" in log and log.count("Running stage") == 1

    _set(repo, "distill", "lr", 0.001)  # only distillation (and the evaluation of its student) reads it
    assert set(json.loads(_dvc("status", "--json", cwd=repo))) == {"distill"}
    _set(repo, "train", "lr", 0.002)  # training and what follows it
    assert set(json.loads(_dvc("status", "--json", cwd=repo))) <= {"train", "pairs", "distill", "evaluate"}
    _set(repo, "prior", "components", 6)  # the prior, and so training
    assert {"prior", "train"} <= set(json.loads(_dvc("status", "--json", cwd=repo))) <= {"prior", "train", "pairs", "distill", "evaluate"}
    log = _dvc("repro", cwd=repo)
    assert "Running stage 'sample'" not in log and "Running stage 'prior'" in log and "Running stage 'train'" in log
    assert "Running stage 'distill'" in log

    _set(repo, "analyze", "seed", 3)  # a param `sample` does not read
    status = json.loads(_dvc("status", "--json", cwd=repo))
    assert set(status) == {"analyze"}
    log = _dvc("repro", cwd=repo)
    assert "Running stage 'sample'" not in log and "Running stage 'analyze'" in log
    assert json.loads(_dvc("status", "--json", cwd=repo)) == {}

    _set(repo, "sample", "steps", 5)  # a param it does read
    status = json.loads(_dvc("status", "--json", cwd=repo))
    assert "sample" in status
    assert {"changed deps": {"params.yaml": {"sample.steps": "modified"}}} in status["sample"]
    _dvc("repro", cwd=repo)
    assert store.open_store(repo / "data" / "features.zarr")["timesteps"].shape == (5,)
    assert json.loads((repo / "data" / "timesteps.json").read_text())["steps"] == 5


def test_exp_run_with_fewer_iterations_equals_a_fresh_run(reproduced_repo, tmp_path, one_thread):
    """After a 2-iteration `dvc repro`, `dvc exp run -S train.iterations=1 -S distill.iterations=2` writes a
    generator and a student equal, tensor for tensor, to fresh runs of that length; a lower batch size
    reruns nothing. The fresh runs here use one thread, as DVC's commands do (`run_in`): float sums
    in a convolution's backward are ordered by thread, so two threads give other bits."""
    import torch

    from diffsketch.core import load_params
    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student
    from diffsketch.training import TrainPaths, load_generator, run_train

    repo = tmp_path / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)
    _set(repo, "sample", "batch_size", 1)
    _set(repo, "pairs", "batch_size", 1)
    assert json.loads(_dvc("status", "--json", cwd=repo)) == {}  # batch sizes rerun nothing
    log = run_in([sys.executable, "stages/sample.py", "--params", "params.yaml", "--out", "data/features.zarr"], repo)
    assert "is complete (4 trajectories); nothing to do" in log

    _dvc("exp", "run", "-S", "train.iterations=1", "-S", "distill.iterations=2", cwd=repo)
    params = load_params(repo / "params.yaml")
    assert params.train.iterations == 1 and params.distill.iterations == 2
    fresh = tmp_path / "fresh"
    run_train(params, TrainPaths(timesteps=repo / "data/timesteps.json", prior=repo / "models/prior.safetensors",
                                 generator=fresh / "generator.safetensors", checkpoints=fresh / "ckpt", live=fresh / "live"),
              progress=False)  # fmt: skip
    expected, _ = load_generator(fresh / "generator.safetensors")
    got, meta = load_generator(repo / "models" / "generator.safetensors")
    assert meta["iterations"] == 1
    for name, value in expected.state_dict().items():
        assert torch.equal(value, got.state_dict()[name]), name
    run_distill(params, repo / "data/pairs.zarr", fresh / "student.safetensors", fresh / "dlive", progress=False,
                checkpoints=fresh / "dckpt")  # fmt: skip
    expected, _ = load_student(fresh / "student.safetensors")
    got, meta = load_student(repo / "models" / "student.safetensors")
    assert meta["iterations"] == 2
    for name, value in expected.state_dict().items():
        assert torch.equal(value, got.state_dict()[name]), name
