import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DVC_STUDIO_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright never downloads its own browser here
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync"]  # fmt: skip
needs_chromium = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium package (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the system's) driven by Playwright, one per test module."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def tiny():
    """The tiny SD model on the CPU (session-wide: build it once)."""
    from diffsketch.core.params import ModelConfig
    from diffsketch.diffusion.models import load_model

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
    from diffsketch.core.params import parse_params

    settings = dict(prompts=str(prompts), trajectories=4, steps=4, resolution=64, pool=1, batch_size=2)
    settings.update(sample)
    return parse_params({"model": {"id": "tiny", "device": "cpu"}, "sample": settings})


TINY_PIPELINE = {  # params small enough to run the whole DVC pipeline in about a minute on 2 cores
    "sample": dict(trajectories=4, steps=4, resolution=64, pool=1), "analyze": dict(pca_dims=3, k_min=2, k_max=3),
    "prior": dict(components=8), "train": dict(iterations=2, checkpoint_every=1, sample_every=1), "pairs": dict(count=4),
    "distill": dict(iterations=3, eval_every=3, crop=32, holdout=0.25), "eval_data": dict(photos=["chelsea", "coins"]),
    "evaluate": dict(size=48, grid=1),
}  # fmt: skip


def run_in(args, cwd, stdout_only=False):
    """Run a command in ``cwd`` with this venv's ``python`` first on PATH, offline; fail the test on an error."""
    import subprocess
    import sys

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # one thread: float results do not depend on how many threads a run gets (the crash matrix compares them bitwise)
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout if stdout_only else result.stdout + result.stderr


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory):
    """The project's pipeline on TINY_PIPELINE params in a git + DVC repo, reproduced once and committed
    (tests copy it: ``shutil.copytree(reproduced_repo, tmp_path / "repo", symlinks=True)``)."""
    import sys

    import yaml

    repo = _copy_pipeline(tmp_path_factory.mktemp("reproduced") / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_PIPELINE.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_in(["git", "init", "-q"], repo)
    run_in([sys.executable, "-m", "dvc", "init", "-q"], repo)
    log = run_in([sys.executable, "-m", "dvc", "repro"], repo)
    run_in(["git", "add", "-A"], repo)
    run_in(["git", "commit", "-qm", "baseline"], repo)
    (repo.parent / "repro.log").write_text(log)  # beside the repo, which stays clean
    return repo


def _copy_pipeline(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
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

    threads, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # so that a command's threads: auto keeps one thread too
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = variable


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A random student (width 8, 2 downsamples, 1 block) saved to a file."""
    import torch

    from diffsketch.student.network import Student, StudentConfig, save_student

    torch.manual_seed(0)
    return save_student(Student(StudentConfig(width=8, downsamples=2, blocks=1)), tmp_path_factory.mktemp("model") / "s.safetensors")


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app):
    """``app`` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def store_arrays(store) -> dict:
    """Every array of a Zarr store (a path, URL or open group) and its unet/vae subgroups, as numpy, by path."""
    import zarr

    root = zarr.open_group(str(store), mode="r") if isinstance(store, (str, Path)) else store
    out = {name: a[...] for name, a in root.arrays()}
    for group in ("unet", "vae"):
        if group in root:
            out |= {f"{group}/{name}": a[...] for name, a in root[group].arrays()}
    return out


def assert_same_stores(a, b) -> None:
    """Two stores hold the same arrays, bit for bit."""
    import numpy as np

    xa, xb = store_arrays(a), store_arrays(b)
    assert xa.keys() == xb.keys()
    for key in xa:
        np.testing.assert_array_equal(xa[key], xb[key], err_msg=key)


@pytest.fixture
def teacher(tiny, tmp_path):
    """A random generator and a text prior for the tiny model, saved as the train and prior stages would."""
    import torch

    from diffsketch.diffusion.features import unet_layers, vae_layers
    from diffsketch.training.generator import SketchGenerator, save_generator
    from diffsketch.training.prior import fit_prior

    torch.manual_seed(0)
    gen = SketchGenerator(unet_layers(tiny.unet.config, 64, 8), vae_layers(tiny.vae.config, 64), 2)
    meta = dict(model="tiny", resolution=64, steps=4, guidance=5.0, capture="residual", ddim_indices=[0, 2])
    save_generator(gen, tmp_path / "generator.safetensors", meta=meta)
    embeddings = torch.randn(20, 77, 32, generator=torch.Generator().manual_seed(0))
    fit_prior(embeddings, 8, meta={"model": "tiny"}).save(tmp_path / "prior.safetensors")
    return tmp_path / "generator.safetensors", tmp_path / "prior.safetensors"


def interrupt_on_call(monkeypatch, module, name: str, n: int):
    """Make ``module.name`` raise KeyboardInterrupt on its ``n``-th call (a Ctrl-C mid-run); returns the original."""
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return real


def record_writes(monkeypatch, interrupt_at: int | None = None) -> list[list[int]]:
    """Record the trajectory indices of every ``store.write_trajectories`` call (raising
    KeyboardInterrupt, a Ctrl-C mid-run, on call ``interrupt_at``); returns the record. Patching again
    (to watch the resumed run) wraps the real function, not the previous recorder."""
    from diffsketch.store import zarr_store as store

    real, calls = getattr(store.write_trajectories, "real", store.write_trajectories), []

    def write(root, indices, *rest):
        calls.append(list(indices))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(root, indices, *rest)

    write.real = real
    monkeypatch.setattr(store, "write_trajectories", write)
    return calls
