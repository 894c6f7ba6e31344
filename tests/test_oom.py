"""Out-of-memory recovery in `sample`, `pairs`, `train` and `distill`: the batch is halved and the same
work redone, with the results of a run that never ran out.

Out-of-memory errors are injected on the CPU: the stage's own batch function raises
``torch.OutOfMemoryError`` (what ``torch.cuda.OutOfMemoryError`` is) above a chosen batch size.
Oracles: the same stage run without the injection. For `sample` and `pairs` that run uses the batch
the recovery falls back to, so the same batches are denoised and the stores are bit-identical; for
`train` and `distill`, where the batch is a hyperparameter, the oracle is the full-batch step, which
the recovery redoes as micro-batches with gradients accumulated: the same losses and gradients up to
float summation order.
"""

import logging

import numpy as np
import pytest
import torch
from conftest import assert_same_stores, small_params

from diffsketch.core import batching
from diffsketch.core.params import parse_params

OOM = "out of memory at batch"


def _oom_above(limit: int, size_of, real):
    """``real``, raising torch.OutOfMemoryError whenever its batch (``size_of(args, kwargs)``) exceeds ``limit``."""
    sizes = []

    def wrapped(*args, **kwargs):
        size = size_of(args, kwargs)
        sizes.append(size)
        if size > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real(*args, **kwargs)

    return wrapped, sizes


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if OOM in r.getMessage()]


def test_halving_redoes_the_failed_work_and_keeps_the_smaller_batch():
    halving = batching.Halving(8, "cpu", "demo")
    seen = []

    def work(chunk):
        seen.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("injected")
        return [x * 10 for x in chunk]

    got = [(chunk, out) for chunk, out in halving.chunks(range(10), work)]
    assert [c for c, _ in got] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # 8 fails, 4 fails, then 2s
    assert all(out == [x * 10 for x in c] for c, out in got)
    assert seen == [8, 4, 2, 2, 2, 2, 2] and halving.batch == 2 and halving.halvings == 2

    steps = []

    def step(size):  # a step done in micro-batches of `size`: runs out of memory above 1
        steps.append(size)
        if size > 1:
            raise torch.OutOfMemoryError("injected")
        return "done"

    assert batching.Halving(4, "cpu", "demo").run(step) == "done" and steps == [4, 2, 1]
    with pytest.raises(batching.OutOfMemoryError, match="even for one item"):
        batching.Halving(2, "cpu", "demo").run(lambda size: step(size + 1))  # out of memory at every size


def test_sample_out_of_memory_halves_the_batch_with_the_same_store(prompts_dir, tmp_path, tiny, monkeypatch, caplog):
    from diffsketch.store import collect

    run_sample = collect.run_sample
    run_sample(small_params(prompts_dir, trajectories=6, batch_size=2), tmp_path / "two.zarr", progress=False, model=tiny)
    injected, sizes = _oom_above(2, lambda a, k: len(a[1]), collect.sample)
    monkeypatch.setattr(collect, "sample", injected)
    with caplog.at_level(logging.WARNING, logger="diffsketch.core.batching"):
        run_sample(small_params(prompts_dir, trajectories=6, batch_size=4), tmp_path / "four.zarr", progress=False, model=tiny)
    assert sizes == [4, 2, 2, 2]  # block [0..3] fails at 4 and is redone as 2 + 2; block [4, 5] runs at 2
    assert len(_warnings(caplog)) == 1 and "batch 4" in _warnings(caplog)[0] and "batch 2" in _warnings(caplog)[0]
    assert_same_stores(tmp_path / "two.zarr", tmp_path / "four.zarr")


def test_pairs_out_of_memory_halves_the_batch_with_the_same_pairs(tiny, teacher, tmp_path, monkeypatch, caplog):
    import diffsketch.student.pairs as pairs_module
    from diffsketch.student.pairs import open_pairs, run_pairs

    gen_path, prior_path = teacher

    def params(batch_size):
        return parse_params({"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 5, "batch_size": batch_size}})

    run_pairs(params(2), gen_path, prior_path, tmp_path / "two.zarr", progress=False, model=tiny)
    injected, sizes = _oom_above(2, lambda a, k: len(a[2]), pairs_module.sample_conditions)
    monkeypatch.setattr(pairs_module, "sample_conditions", injected)
    with caplog.at_level(logging.WARNING, logger="diffsketch.core.batching"):
        run_pairs(params(4), gen_path, prior_path, tmp_path / "four.zarr", progress=False, model=tiny)
    assert sizes == [4, 2, 2, 1] and len(_warnings(caplog)) == 1
    a, b = open_pairs(tmp_path / "two.zarr"), open_pairs(tmp_path / "four.zarr")
    assert b["complete"][:].all()
    assert np.array_equal(a["images"][:], b["images"][:]) and np.array_equal(a["sketches"][:], b["sketches"][:])


def _record_gradients(monkeypatch) -> list[list[torch.Tensor]]:
    """Every Adam step's gradients, recorded before the step is taken."""
    steps, real = [], torch.optim.Adam.step

    def step(self, *args, **kwargs):
        steps.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"] if p.grad is not None])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return steps


def _assert_same_gradients(want: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    """Equal up to float summation order: within 1e-4 of the largest gradient element (some tensors, e.g.
    a bias before an instance norm, have gradients that are rounding noise alone)."""
    assert len(want) == len(got) and want
    scale = max(float(a.abs().max()) for a in want)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale), ((a - b).abs().max(), scale)


def test_train_out_of_memory_redoes_the_step_in_micro_batches(tiny, tmp_path, monkeypatch, caplog):
    """The oracle is the full-batch step: the same loss and, at the first iteration (same weights), the
    same gradients up to float order (Adam turns float-order differences of near-zero gradient elements
    into differences of a share of a step, so the weights are not compared)."""
    from test_training import make_params, prepare

    import diffsketch.training.trainer as trainer_module
    from diffsketch.training.generator import SketchGenerator

    params = make_params(train={"iterations": 1, "batch": 2, "checkpoint_every": 1, "sample_every": 1})
    losses = {"clean": [], "injected": []}
    gradients = _record_gradients(monkeypatch)
    trainer_module.run_train(params, prepare(tmp_path / "clean"), progress=False, model=tiny,
                             on_iteration=lambda i, r: losses["clean"].append(r["loss"]))  # fmt: skip
    clean_gradients = list(gradients)
    gradients.clear()

    sampled, sample_sizes = _oom_above(1, lambda a, k: len(a[2]), trainer_module.sample_conditions)
    monkeypatch.setattr(trainer_module, "sample_conditions", sampled)
    forward, forward_sizes = _oom_above(1, lambda a, k: a[1].batch, SketchGenerator.forward)
    monkeypatch.setattr(SketchGenerator, "forward", forward)
    with caplog.at_level(logging.WARNING, logger="diffsketch.core.batching"):
        trainer_module.run_train(params, prepare(tmp_path / "injected"), progress=False, model=tiny,
                                 on_iteration=lambda i, r: losses["injected"].append(r["loss"]))  # fmt: skip
    assert sample_sizes == [2, 1, 1] and max(forward_sizes) == 1  # sampled in halves, then micro-batches of 1
    assert len(_warnings(caplog)) == 1
    # the loss of each iteration: the example's terms once, the batch terms' mean
    np.testing.assert_allclose(losses["injected"], losses["clean"], rtol=1e-5)
    _assert_same_gradients(clean_gradients[0], gradients[0])


def test_distill_out_of_memory_redoes_the_step_in_micro_batches(tiny, teacher, tmp_path, monkeypatch, caplog):
    from diffsketch.student.distill import PatchDiscriminator, run_distill
    from diffsketch.student.network import Student
    from diffsketch.student.pairs import run_pairs

    gen_path, prior_path = teacher
    params = parse_params({
        "model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 6, "batch_size": 6}, "losses": {"lpips_net": "random"},
        "distill": {"width": 8, "downsamples": 2, "blocks": 1, "iterations": 3, "batch": 4, "crop": 32, "lr": 3e-3,
                    "holdout": 0.2, "eval_every": 3, "gan": 0.1},
    })  # fmt: skip
    run_pairs(params, gen_path, prior_path, tmp_path / "pairs.zarr", progress=False, model=tiny)
    gradients = _record_gradients(monkeypatch)
    run_distill(params, tmp_path / "pairs.zarr", tmp_path / "a.safetensors", tmp_path / "a", progress=False, checkpoints=tmp_path / "ca")
    clean_gradients = list(gradients)
    gradients.clear()

    student_forward, student_sizes = _oom_above(2, lambda a, k: len(a[1]), Student.forward)
    disc_forward, disc_sizes = _oom_above(2, lambda a, k: len(a[1]), PatchDiscriminator.forward)
    monkeypatch.setattr(Student, "forward", student_forward)
    monkeypatch.setattr(PatchDiscriminator, "forward", disc_forward)
    with caplog.at_level(logging.WARNING, logger="diffsketch.core.batching"):
        run_distill(params, tmp_path / "pairs.zarr", tmp_path / "b.safetensors", tmp_path / "b", progress=False, checkpoints=tmp_path / "cb")
    assert student_sizes.count(4) == 1 and max(disc_sizes) == 2 and len(_warnings(caplog)) == 1  # halved once, for good
    assert len(gradients) == len(clean_gradients) == 6  # student and discriminator, 3 iterations
    _assert_same_gradients(clean_gradients[0], gradients[0])  # the student's first step (same weights)
    _assert_same_gradients(clean_gradients[1], gradients[1])  # the discriminator's
