"""The pairs stage (resumable, batch-independent) and distillation into the student."""

import numpy as np
import pytest
import torch

from conftest import interrupt_on_call
from diffsketch.core.params import parse_params
from diffsketch.student.pairs import PairsError, open_pairs, run_pairs


def params(**pairs):
    return parse_params({"model": {"id": "tiny", "device": "cpu"}, "pairs": {"count": 5, "batch_size": 2, **pairs},
                         "losses": {"lpips_net": "random"},
                         "distill": {"width": 8, "downsamples": 2, "blocks": 1, "iterations": 40, "batch": 4,
                                     "crop": 32, "lr": 3e-3, "holdout": 0.2, "eval_every": 20}})  # fmt: skip


def test_pairs_resume_and_batch_independence(tiny, teacher, tmp_path, monkeypatch):
    gen_path, prior_path = teacher
    run_pairs(params(), gen_path, prior_path, tmp_path / "a.zarr", progress=False, model=tiny)
    a = open_pairs(tmp_path / "a.zarr")
    assert a["complete"][:].all() and a["images"].shape == (5, 64, 64, 3) and a["sketches"].shape == (5, 64, 64)
    assert a["sketches"][:].std() > 0

    # interrupted after the first block, then resumed: the same pairs
    import diffsketch.student.pairs as pairs_module

    real = interrupt_on_call(monkeypatch, pairs_module, "sample_conditions", 2)
    with pytest.raises(KeyboardInterrupt):
        run_pairs(params(), gen_path, prior_path, tmp_path / "b.zarr", progress=False, model=tiny)
    monkeypatch.setattr(pairs_module, "sample_conditions", real)
    assert open_pairs(tmp_path / "b.zarr")["complete"][:].tolist() == [True, True, False, False, False]
    run_pairs(params(), gen_path, prior_path, tmp_path / "b.zarr", progress=False, model=tiny)
    b = open_pairs(tmp_path / "b.zarr")
    assert b["complete"][:].all()
    assert np.array_equal(a["images"][:], b["images"][:]) and np.array_equal(a["sketches"][:], b["sketches"][:])

    # other settings: the store is kept under its key, and setting them back takes it up again
    run_pairs(params(seed=1), gen_path, prior_path, tmp_path / "a.zarr", progress=False, model=tiny)
    assert len(list((tmp_path / "a.zarr.kept").iterdir())) == 1
    calls = []
    monkeypatch.setattr(pairs_module, "sample_conditions", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_pairs(params(), gen_path, prior_path, tmp_path / "a.zarr", progress=False, model=tiny)
    assert calls == [] and not (tmp_path / "a.zarr.kept" / open_pairs(tmp_path / "a.zarr").attrs["fingerprint"]).exists()
    assert np.array_equal(a["sketches"][:], open_pairs(tmp_path / "a.zarr")["sketches"][:])

    # a lower batch size: every pair is already done (the batch size is not part of the key) ...
    run_pairs(params(batch_size=1), gen_path, prior_path, tmp_path / "a.zarr", progress=False, model=tiny)
    assert calls == []
    # ... and pairs made one by one agree with those made in pairs to one grey level (docs/reruns.md)
    run_pairs(params(batch_size=1), gen_path, prior_path, tmp_path / "c.zarr", progress=False, model=tiny)
    c = open_pairs(tmp_path / "c.zarr")
    for name in ("images", "sketches"):
        assert np.abs(a[name][:].astype(int) - c[name][:].astype(int)).max() <= 1, name


def test_pairs_bad_inputs(teacher, tmp_path):
    from diffsketch.training.generator import GeneratorLoadError

    gen_path, prior_path = teacher
    with pytest.raises(GeneratorLoadError):
        run_pairs(params(), tmp_path / "none.safetensors", prior_path, tmp_path / "p.zarr", progress=False)
    other = parse_params({"model": {"id": "sd15-random"}})
    with pytest.raises(PairsError, match="model 'tiny'"):
        run_pairs(other, gen_path, prior_path, tmp_path / "p.zarr", progress=False)
    with pytest.raises(PairsError, match="not found"):
        open_pairs(tmp_path / "missing.zarr")


def test_student_learns_its_teacher(tiny, teacher, tmp_path):
    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student

    gen_path, prior_path = teacher
    p = params(count=10)
    run_pairs(p, gen_path, prior_path, tmp_path / "pairs.zarr", progress=False, model=tiny)
    result = run_distill(p, tmp_path / "pairs.zarr", tmp_path / "student.safetensors", tmp_path / "live", progress=False)
    assert result["l1"] < 0.5 * result["blank_l1"], result
    student, meta = load_student(tmp_path / "student.safetensors")
    assert meta["holdout"]["l1"] < meta["holdout_before"]["l1"]
    rows = (tmp_path / "live" / "plots" / "metrics" / "holdout" / "l1.tsv").read_text().splitlines()
    assert len(rows) == 3  # header + evaluations at 20 and 40
    with torch.no_grad():
        assert student(torch.rand(1, 3, 45, 70)).shape == (1, 1, 45, 70)


def test_lowering_distill_iterations_gives_a_fresh_run_of_that_length(tmp_path):
    """8 iterations, then 5 (resumed from the checkpoint at 5, not the one at 8): equal, tensor for tensor, to a fresh 5-iteration run that checkpoints and scores at
    other intervals, in another folder (settings left out of the key change nothing)."""
    from test_resilience import DISTILL, SETTINGS, make_pairs

    from diffsketch.student.distill import run_distill
    from diffsketch.student.network import load_student

    pairs = make_pairs(tmp_path / "pairs.zarr")
    long = tmp_path / "long"
    run = lambda folder, **distill: run_distill(  # noqa: E731
        parse_params({**SETTINGS, "distill": {**DISTILL, **distill}}), pairs, folder / "student.safetensors",
        folder / "live", progress=False, checkpoints=folder / "ckpt",
    )  # fmt: skip
    run(long, checkpoint_every=5)  # checkpoints at 5 and 8; the score at 5 is from iteration 3 (eval_every 3)
    lowered_result = run(long, iterations=5)  # resumed at 5, nothing left to train
    lowered, meta = load_student(long / "student.safetensors")
    fresh_result = run(tmp_path / "fresh", iterations=5, checkpoint_every=1, eval_every=2, max_skips=5)
    fresh, fresh_meta = load_student(tmp_path / "fresh" / "student.safetensors")
    assert meta["iterations"] == 5 and meta["key"] == fresh_meta["key"]
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, lowered.state_dict()[name]), name
    assert lowered_result == fresh_result  # the held-out score is of the 5-iteration weights
    assert list(long.rglob("checkpoint-000008.safetensors"))  # the longer run stays resumable
