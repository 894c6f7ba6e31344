import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DVC_STUDIO_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny():
    """The tiny SD model on the CPU (session-wide: build it once)."""
    from diffsketch.config import ModelConfig
    from diffsketch.models import load_model

    return load_model(ModelConfig(id="tiny", device="cpu"))


@pytest.fixture
def prompts_dir(tmp_path):
    """A small prompts folder: 3 classes of 2 prompts."""
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "animals.txt").write_text("# animals\na photo of a horse in mud\na cat on a sofa\n")
    (d / "food.txt").write_text("a bowl of ramen\n\na slice of pizza\n")
    (d / "vehicles.txt").write_text("a red bicycle\na yellow school bus\n")
    return d


def small_params(prompts, **sample):
    """Params for a fast tiny run: 64 px, few steps."""
    from diffsketch.config import parse_params

    settings = dict(prompts=str(prompts), trajectories=4, steps=4, resolution=64, pool=1, batch_size=2)
    settings.update(sample)
    return parse_params({"model": {"id": "tiny", "device": "cpu"}, "sample": settings})


@pytest.fixture
def repo_copy(tmp_path):
    """A copy of the project's pipeline files (dvc.yaml, params.yaml, stages, library, data) in a fresh folder."""
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, dst / name)
    shutil.copytree(REPO / "stages", dst / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "diffsketch", dst / "diffsketch", ignore=shutil.ignore_patterns("__pycache__"))
    for data in ("prompts", "captions", "example"):
        shutil.copytree(REPO / "data" / data, dst / "data" / data)
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: the tiny student is fast on one, and much slower with threads fighting over busy cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A random student (width 8, 2 downsamples, 1 block) saved to a file."""
    import torch

    from diffsketch.student import Student, StudentConfig, save_student

    torch.manual_seed(0)
    return save_student(Student(StudentConfig(width=8, downsamples=2, blocks=1)), tmp_path_factory.mktemp("model") / "s.safetensors")
