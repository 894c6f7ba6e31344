"""Nothing lost, nothing silent (issue 17): distill resumes exactly after SIGKILL, non-finite steps are
skipped and never written, one writer per store."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from diffsketch.training.checkpoint import NonFiniteError, latest_checkpoint, save_checkpoint
from diffsketch.core.params import parse_params

# gan > 0: the discriminator and its optimiser are checkpointed too; crop 24 is the smallest the PatchGAN takes
DISTILL = {"width": 8, "downsamples": 2, "blocks": 1, "iterations": 8, "batch": 1, "crop": 24, "lr": 3e-3,
           "holdout": 0.25, "eval_every": 3, "checkpoint_every": 3, "lpips": 0, "gan": 0.5, "max_skips": 3}  # fmt: skip
SETTINGS = {"model": {"id": "tiny", "device": "cpu"}, "losses": {"lpips_net": "random"}, "distill": DISTILL}


def make_pairs(path, count=8, size=32):
    """A small complete pairs store with random content (no model needed)."""
    from diffsketch.student.pairs import _create

    root = _create(path, count, size, {"seed": 0})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    root["images"][:] = images
    root["sketches"][:] = np.where(images.mean(-1) > 128, 255, 0).astype(np.uint8)
    root["complete"][:] = True
    return path


# The distill CLI in a real subprocess; PairSampler.batch counts its calls into a file and, in "kill"
# mode, the process SIGKILLs itself at the given call (mid-iteration, between two checkpoints).
RUNNER = """
import os, signal, sys
from diffsketch.student import distill as distillation
from diffsketch.cli.main import app
mode, at, counter = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real, calls = distillation.PairSampler.batch, []
def batch(self, *args, **kwargs):
    calls.append(1)
    if mode == "kill" and len(calls) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    with open(counter, "w") as f:
        f.write(str(len(calls)))
    return real(self, *args, **kwargs)
distillation.PairSampler.batch = batch
app(sys.argv[4:])
"""


def _tsv(live):
    folder = live / "plots" / "metrics"
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.tsv"))}


def test_distill_killed_with_sigkill_resumes_to_the_same_weights(tmp_path):
    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student

    pairs = make_pairs(tmp_path / "pairs.zarr")
    params = parse_params(SETTINGS)
    run_distill(params, pairs, tmp_path / "a" / "student.safetensors", tmp_path / "a" / "live", progress=False,
                checkpoints=tmp_path / "a" / "ckpt")  # fmt: skip
    expected, _ = load_student(tmp_path / "a" / "student.safetensors")

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(SETTINGS))
    b = tmp_path / "b"
    cli = ["distill", "--params", str(tmp_path / "params.yaml"), "--pairs", str(pairs), "--out", str(b / "student.safetensors"),
           "--live", str(b / "live"), "--checkpoints", str(b / "ckpt"), "--no-progress"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    counter = tmp_path / "calls"
    killed = subprocess.run([sys.executable, "-c", RUNNER, "kill", "5", str(counter), *cli], env=env, cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (b / "student.safetensors").exists()
    (keyed,) = [p for p in (b / "ckpt").iterdir() if p.is_dir()]  # checkpoints live under their key
    assert latest_checkpoint(keyed).name == "checkpoint-000003.safetensors"
    # a save torn by a kill leaves only a .tmp file: it must be ignored
    (keyed / "checkpoint-000006.safetensors.tmp").write_bytes(b"\x00torn")

    resumed = subprocess.run([sys.executable, "-c", RUNNER, "count", "0", str(counter), *cli], env=env, cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert counter.read_text() == "5"  # resumed at iteration 3 of 8, not started over
    got, meta = load_student(b / "student.safetensors")
    assert expected.state_dict().keys() == got.state_dict().keys()
    for name, value in expected.state_dict().items():
        assert torch.equal(value, got.state_dict()[name]), name
    assert _tsv(b / "live") == _tsv(tmp_path / "a" / "live")  # each iteration logged once, same values
    assert "train/discriminator.tsv" in _tsv(b / "live")
    assert json.loads((b / "live" / "metrics.json").read_text()) == json.loads((tmp_path / "a" / "live" / "metrics.json").read_text())
    assert not list((b / "ckpt").rglob("*.tmp"))


def _nan_batches(monkeypatch, bad):
    """Make the distillation's batches NaN at the iterations in ``bad`` (a set of batch-call indices)."""
    from diffsketch.student import distill as distillation

    real, calls = distillation.PairSampler.batch, []

    def batch(self, *args, **kwargs):
        images, sketches = real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) - 1 in bad:
            images = images * float("nan")
        return images, sketches

    monkeypatch.setattr(distillation.PairSampler, "batch", batch)


def test_distill_skips_nonfinite_steps_and_stops_after_max_skips(tmp_path, monkeypatch):
    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student

    pairs = make_pairs(tmp_path / "pairs.zarr")
    params = parse_params({**SETTINGS, "distill": {**DISTILL, "gan": 0}})
    _nan_batches(monkeypatch, {2, 3})
    run_distill(params, pairs, tmp_path / "s.safetensors", tmp_path / "live", progress=False, checkpoints=tmp_path / "ck")
    student, meta = load_student(tmp_path / "s.safetensors")
    assert meta["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in student.state_dict().values() if v.is_floating_point())

    monkeypatch.undo()
    _nan_batches(monkeypatch, set(range(4, 100)))
    with pytest.raises(NonFiniteError, match=r"iteration 6\b.*distill\.lr"):
        run_distill(params, pairs, tmp_path / "t.safetensors", tmp_path / "live2", progress=False, checkpoints=tmp_path / "ck2")
    assert not (tmp_path / "t.safetensors").exists()
    from safetensors.torch import load_file

    for path in (tmp_path / "ck2").glob("checkpoint-*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point()), path


def test_checkpoint_with_nonfinite_values_is_never_written(tmp_path):
    good = save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"key": "k"})
    with pytest.raises(NonFiniteError, match="iteration 2"):
        save_checkpoint(tmp_path, 2, {"w": torch.tensor([1.0, float("inf"), 0.0])}, {"key": "k"})
    assert latest_checkpoint(tmp_path) == good and not list(tmp_path.glob("*.tmp"))


def test_train_skips_a_nan_loss_and_never_writes_nonfinite_weights(tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_training import make_params, prepare

    from diffsketch.training import trainer as training
    from diffsketch.training.checkpoint import checkpoint_meta

    real, calls = training.SketchLoss.forward, []

    def nan_at(self, *args, **kwargs):  # iterations 0, 2 and 3 get a NaN loss
        total, terms = real(self, *args, **kwargs)
        calls.append(1)
        return (total * float("nan"), terms) if len(calls) - 1 in (0, 2, 3) else (total, terms)

    monkeypatch.setattr(training.SketchLoss, "forward", nan_at)
    sample_batch, batches = training.Trainer.sample_batch, []

    def sampled_once(self, iteration):  # the guard does not depend on the images: sample them once (CI time)
        if not batches:
            batches.append(sample_batch(self, iteration))
        return batches[0]

    monkeypatch.setattr(training.Trainer, "sample_batch", sampled_once)
    paths = prepare(tmp_path / "run")
    params = make_params(train={"iterations": 5, "checkpoint_every": 1, "sample_every": 5, "max_skips": 2})
    with pytest.raises(NonFiniteError, match=r"train stopped at iteration 3\b.*2 iterations in a row.*train\.lr"):
        training.run_train(params, paths, progress=False, model=tiny)
    assert not paths.generator.exists()
    ckpts = {int(p.stem.split("-")[1]): p for p in paths.checkpoints.rglob("checkpoint-*.safetensors")}  # under the run's key
    assert sorted(ckpts) == [2, 3]  # the last two kept; nothing written after the stop
    assert json.loads(checkpoint_meta(ckpts[3])["guard"])["skipped"] == 2  # iterations 0 and 2 skipped, 1 trained
    for path in ckpts.values():
        tensors = load_file(str(path))
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), path
    # iteration 2 was skipped: its checkpoint (at 3) has the weights of the one at 2
    a, b = load_file(str(ckpts[2])), load_file(str(ckpts[3]))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("generator."))


HOLDER = """
import sys, time
from diffsketch.store import zarr_store as store
lock = store.writer_lock(sys.argv[1])  # kept referenced: collecting it would release the lock
lock.__enter__()
print("locked", flush=True)
time.sleep(120)
"""


def test_one_writer_per_store_and_a_killed_writer_does_not_block(tiny, teacher, prompts_dir, tmp_path):
    import socket

    from conftest import small_params

    from diffsketch.store import zarr_store as store
    from diffsketch.store.collect import run_sample
    from diffsketch.student.pairs import run_pairs

    out = tmp_path / "features.zarr"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        params = small_params(prompts_dir)
        with pytest.raises(store.StoreBusyError, match=rf"pid {holder.pid} on host {socket.gethostname()}"):
            run_sample(params, out, progress=False, model=tiny)
        with pytest.raises(store.StoreBusyError, match=rf"pid {holder.pid}"):
            run_pairs(params, *teacher, out, progress=False, model=tiny)
        with store.writer_lock(out, enabled=False):  # another worker of the holder's own distributed run
            pass
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind
        holder.wait()
    assert (tmp_path / "features.zarr.lock").exists()
    run_sample(params, out, progress=False, model=tiny)
    assert store.complete_mask(store.open_store(out)).all()
    assert not (tmp_path / "features.zarr.lock").exists()


def _skipped_metric(live):
    """The dvclive record of skipped steps: [(step, running count)] from its plot file, and the total in metrics.json."""
    rows = (live / "plots" / "metrics" / "train" / "skipped_steps.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "skipped_steps"]
    series = [(int(step), float(value)) for step, value in (row.split("\t") for row in rows[1:])]
    return series, json.loads((live / "metrics.json").read_text())["train"]["skipped_steps"]


def test_distill_logs_the_running_count_of_skipped_steps(tmp_path, monkeypatch):
    from diffsketch.student.distill import run_distill

    pairs = make_pairs(tmp_path / "pairs.zarr")
    clean = parse_params({**SETTINGS, "distill": {**DISTILL, "gan": 0}})
    run_distill(clean, pairs, tmp_path / "a.safetensors", tmp_path / "clean", progress=False, checkpoints=tmp_path / "ck")
    assert _skipped_metric(tmp_path / "clean") == ([(i, 0.0) for i in range(DISTILL["iterations"])], 0)

    bad = {2, 5}
    _nan_batches(monkeypatch, bad)  # gan > 0: the student's and the discriminator's steps are both skipped on a NaN batch
    run_distill(parse_params(SETTINGS), pairs, tmp_path / "b.safetensors", tmp_path / "nan", progress=False, checkpoints=tmp_path / "ck2")
    expected = [(i, 2.0 * sum(b <= i for b in bad)) for i in range(DISTILL["iterations"])]  # two steps per bad iteration
    assert _skipped_metric(tmp_path / "nan") == (expected, 4)


def test_train_logs_the_running_count_of_skipped_steps_across_a_resume(tiny, tmp_path, monkeypatch):
    from test_training import make_params, prepare

    from diffsketch.training import trainer as training

    sample_batch, batches = training.Trainer.sample_batch, []

    def sampled_once(self, iteration):  # the count does not depend on the images: sample them once (CI time)
        if not batches:
            batches.append(sample_batch(self, iteration))
        return batches[0]

    monkeypatch.setattr(training.Trainer, "sample_batch", sampled_once)
    paths = prepare(tmp_path / "run")
    settings = {"checkpoint_every": 1, "sample_every": 10, "max_skips": 2}
    training.run_train(make_params(train={**settings, "iterations": 2}), paths, progress=False, model=tiny)
    assert _skipped_metric(paths.live) == ([(0, 0.0), (1, 0.0)], 0)  # a clean run

    real, calls = training.SketchLoss.forward, []

    def nan_first(self, *args, **kwargs):  # the resumed run's first iteration (iteration 2) gets a NaN loss
        total, terms = real(self, *args, **kwargs)
        calls.append(1)
        return (total * float("nan"), terms) if len(calls) == 1 else (total, terms)

    monkeypatch.setattr(training.SketchLoss, "forward", nan_first)
    training.run_train(make_params(train={**settings, "iterations": 4}), paths, progress=False, model=tiny)
    assert _skipped_metric(paths.live) == ([(0, 0.0), (1, 0.0), (2, 1.0), (3, 1.0)], 1)


def test_distill_does_not_resume_on_other_pairs(tmp_path):
    """Same settings, new pairs (DVC reruns `distill` after a new generator, its checkpoints persisting): start over."""
    import zarr

    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student

    pairs = make_pairs(tmp_path / "pairs.zarr")
    zarr.open_group(str(pairs), mode="r+").attrs["fingerprint"] = "generator-1"
    params = parse_params({**SETTINGS, "distill": {**DISTILL, "gan": 0, "iterations": 3}})
    out = tmp_path / "student.safetensors"
    run = lambda **kw: run_distill(params, pairs, out, tmp_path / "live", progress=False, checkpoints=tmp_path / "ckpt", **kw)  # noqa: E731
    run()
    first, _ = load_student(out)
    root = zarr.open_group(str(pairs), mode="r+")
    root["sketches"][:] = 255 - root["sketches"][:]  # what another generator drew
    root.attrs["fingerprint"] = "generator-2"
    run()  # a new key: starts over, the first pairs' checkpoints kept beside
    second, _ = load_student(out)
    assert len([p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]) == 2
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_the_other_workers_of_a_distributed_run_are_not_blocked_by_its_lock(tiny, prompts_dir, tmp_path, monkeypatch):
    """Rank 0 of a distributed run holds the store's lock (here: another process, as rank 0 is); rank 1
    of that run writes its share of the store all the same."""
    from conftest import interrupt_on_call, small_params

    from diffsketch.store import collect

    from diffsketch.core import distributed

    from diffsketch.store import zarr_store as store
    from diffsketch.core.distributed import Workers

    params = small_params(prompts_dir, trajectories=4, steps=2)  # batches [0, 1] | [2, 3]: rank 1 takes [2, 3]
    out = tmp_path / "features.zarr"
    real = interrupt_on_call(monkeypatch, collect, "sample", 1)  # rank 0 created the store; nothing written yet
    with pytest.raises(KeyboardInterrupt):
        collect.run_sample(params, out, progress=False, model=tiny)
    monkeypatch.setattr(collect, "sample", real)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(store.StoreBusyError):  # a writer from outside the run is refused...
            collect.run_sample(params, out, progress=False, model=tiny)
        monkeypatch.setattr(distributed, "workers", lambda device: Workers(rank=1, world=2))
        collect.run_sample(params, out, progress=False, model=tiny)  # ...the run's own rank 1 is not
    finally:
        holder.kill()
        holder.wait()
    assert store.complete_mask(store.open_store(out)).tolist() == [False, False, True, True]


# A real `diffsketch sample` that stops after writing its first batch, holding the store's lock, to be SIGKILLed there
STOPS_AFTER_ONE_BATCH = """
import sys, time
from diffsketch.store import zarr_store as store
from diffsketch.cli.main import app
real = store.write_trajectories
def write(root, indices, *rest):
    real(root, indices, *rest)
    print("wrote", list(indices), flush=True)
    time.sleep(300)
store.write_trajectories = write
app(sys.argv[1:])
"""


def test_a_sample_run_killed_while_holding_the_lock_does_not_block_the_next(tiny, prompts_dir, tmp_path):
    from conftest import REPO, small_params

    from diffsketch.store import zarr_store as store
    from diffsketch.store.collect import run_sample

    params = small_params(prompts_dir, trajectories=4, steps=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    out, lock = tmp_path / "features.zarr", tmp_path / "features.zarr.lock"
    cli = ["sample", "-p", str(tmp_path / "params.yaml"), "-o", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run = subprocess.Popen([sys.executable, "-c", STOPS_AFTER_ONE_BATCH, *cli], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert run.stdout.readline().strip() == "wrote [0, 1]"
        assert f"pid {run.pid} " in lock.read_text()  # the run holds the lock
    finally:
        run.kill()  # SIGKILL: no cleanup, the lock file stays behind
        run.wait()
    assert run.returncode == -signal.SIGKILL and lock.exists()
    run_sample(params, out, progress=False, model=tiny)  # not blocked: resumes and finishes
    assert store.complete_mask(store.open_store(out)).all() and not lock.exists()
