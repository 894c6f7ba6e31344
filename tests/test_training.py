"""One-shot training: inputs checked before the model loads, exact resume, dvclive outputs."""

import json

import pytest
import torch

from diffsketch.core.params import parse_params
from diffsketch.training.prior import fit_prior
from diffsketch.training.trainer import TrainInputError, TrainPaths, run_train


def make_params(**sections):
    settings = {
        "model": {"id": "tiny", "device": "cpu"},
        "sample": {"steps": 4, "resolution": 64, "guidance": 5.0},
        "example": {"prompt": "a photo of a horse in mud", "seed": 50, "sketch": "xdog"},
        "losses": {"clip_model": "tiny", "lpips_net": "random"},
        "train": {"iterations": 4, "checkpoint_every": 2, "sample_every": 2, "lr": 1e-3, "cdst_horizon": 3},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return parse_params(settings)


def prepare(folder, model="tiny", steps=4, indices=(0, 2)):
    """A timesteps.json and a text prior, as `analyze` and `prior` would write them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "timesteps.json").write_text(
        json.dumps(dict(model=model, steps=steps, ddim_indices=list(indices), timesteps=[981, 501], k=len(indices)))
    )
    embeddings = torch.randn(20, 77, 32, generator=torch.Generator().manual_seed(0))
    fit_prior(embeddings, 8, meta={"model": model}).save(folder / "prior.safetensors")
    return TrainPaths(
        timesteps=folder / "timesteps.json",
        prior=folder / "prior.safetensors",
        generator=folder / "models" / "generator.safetensors",
        checkpoints=folder / "models" / "checkpoints",
        live=folder / "reports" / "train",
    )


def _state(paths):
    from diffsketch.training.generator import load_generator

    gen, meta = load_generator(paths.generator)
    return gen.state_dict(), meta


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    params = make_params()
    straight = prepare(tmp_path / "straight")
    run_train(params, straight, progress=False, model=tiny)
    expected, meta = _state(straight)
    assert meta["ddim_indices"] == [0, 2] and meta["iterations"] == 4 and meta["model"] == "tiny"

    interrupted = prepare(tmp_path / "interrupted")

    def crash(i, record):
        if i == 2:  # iteration 3 ran but its checkpoint (at 4) was never written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train(params, interrupted, progress=False, model=tiny, on_iteration=crash)
    assert not interrupted.generator.exists()
    assert sorted(p.name for p in interrupted.checkpoints.rglob("*.safetensors")) == ["checkpoint-000002.safetensors"]
    run_train(params, interrupted, progress=False, model=tiny)
    resumed, _ = _state(interrupted)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name

    # the dvclive log has each iteration once, even across the interruption
    l1 = (interrupted.live / "plots" / "metrics" / "train" / "l1.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in l1[1:]] == ["0", "1", "2", "3"]
    straight_l1 = (straight.live / "plots" / "metrics" / "train" / "l1.tsv").read_text().splitlines()
    assert l1 == straight_l1

    # more iterations later: resumes from the final checkpoint instead of starting over
    longer = run_train(params.model_copy(update={"train": params.train.model_copy(update={"iterations": 5})}),
                       interrupted, progress=False, model=tiny)  # fmt: skip
    assert longer["cdst_weight"] == 0.0  # iteration 4 is past the horizon of 3


def test_changed_settings_keep_the_earlier_checkpoints_and_setting_them_back_resumes(tiny, tmp_path, caplog):
    paths = prepare(tmp_path)
    params = make_params(train={"iterations": 2})
    run_train(params, paths, progress=False, model=tiny)
    first, _ = _state(paths)
    changed = make_params(train={"iterations": 2, "lr": 5e-4})
    with caplog.at_level("INFO", logger="diffsketch"):
        run_train(changed, paths, progress=False, model=tiny)
    assert "train.lr 0.001 -> 0.0005" in caplog.text and "kept" in caplog.text
    assert len([p for p in paths.checkpoints.iterdir() if p.is_dir()]) == 2  # one folder per key, none deleted
    second, _ = _state(paths)
    assert any(not torch.equal(first[n], second[n]) for n in first)

    import diffsketch.training.trainer as trainer_module

    calls = []
    real_step = trainer_module.Trainer.step
    trainer_module.Trainer.step = lambda self, i: calls.append(i) or real_step(self, i)
    try:
        run_train(params, paths, progress=False, model=tiny)  # set back: resumed at its end, nothing retrained
    finally:
        trainer_module.Trainer.step = real_step
    assert calls == []
    back, _ = _state(paths)
    assert all(torch.equal(first[n], back[n]) for n in first)

    run_train(changed, paths, overwrite=True, progress=False, model=tiny)  # --overwrite: every checkpoint goes
    assert len([p for p in paths.checkpoints.iterdir() if p.is_dir()]) == 1


def test_lowering_iterations_gives_a_fresh_run_of_that_length(tiny, tmp_path):
    """A checkpoint past the requested count is never loaded: 4 iterations, then 2 and 3, equal fresh 2- and
    3-iteration runs bit for bit. The fresh runs checkpoint, log and sample at other intervals, and run in
    another folder: those settings (left out of the key) change nothing."""
    long = prepare(tmp_path / "long")
    run_train(make_params(train={"iterations": 4}), long, progress=False, model=tiny)
    for n in (2, 3):
        run_train(make_params(train={"iterations": n}), long, progress=False, model=tiny)
        lowered, meta = _state(long)
        fresh = prepare(tmp_path / f"fresh{n}")
        fresh.prior.write_bytes(long.prior.read_bytes())  # the same input (a refit may differ in the last bits)
        run_train(make_params(train={"iterations": n, "checkpoint_every": 1, "sample_every": 1, "max_skips": 3}), fresh,
                  progress=False, model=tiny)  # fmt: skip
        expected, fresh_meta = _state(fresh)
        assert meta["iterations"] == n and meta["key"] == fresh_meta["key"]
        for name in expected:
            assert torch.equal(expected[name], lowered[name]), (n, name)
    assert len(list(long.checkpoints.rglob("checkpoint-000004.safetensors"))) == 1  # the longer run stays resumable


def test_outputs_metrics_and_sample_grids(tiny, tmp_path):
    paths = prepare(tmp_path)
    record = run_train(make_params(), paths, progress=False, model=tiny)
    assert {"loss", "l1", "lpips", "clip", "across", "within", "cdst_weight"} <= set(record)
    assert record["time_sampling"] > 0 and record["time_generator"] > 0 and record["time_losses"] > 0
    metrics = json.loads((paths.live / "metrics.json").read_text())
    assert metrics["step"] == 3 and "l1" in metrics["train"]
    for term in ("loss", "l1", "lpips", "clip", "across", "within", "cdst_weight"):
        rows = (paths.live / "plots" / "metrics" / "train" / f"{term}.tsv").read_text().splitlines()
        assert len(rows) == 5, term
    images = paths.live / "plots" / "images"
    assert (images / "samples" / "iter_000002.png").is_file() and (images / "samples" / "iter_000004.png").is_file()
    assert (images / "example" / "image.png").is_file() and (images / "example" / "sketch.png").is_file()
    weights = json.loads((tmp_path / "models" / "generator.json").read_text())
    assert weights["meta"]["clip"] == "tiny" and weights["meta"]["lpips_backbone"] == "random"


def test_generator_learns_the_example(tiny, tmp_path):
    """On the tiny model the L1 to the example sketch at least halves within a short run."""
    paths = prepare(tmp_path)
    params = make_params(train={"iterations": 30, "checkpoint_every": 100, "sample_every": 100, "lr": 3e-3})
    run_train(params, paths, progress=False, model=tiny)
    rows = (paths.live / "plots" / "metrics" / "train" / "l1.tsv").read_text().splitlines()[1:]
    l1 = [float(r.split("\t")[-1]) for r in rows]
    assert l1[-1] < 0.5 * l1[0], l1
    loss = [float(r.split("\t")[-1]) for r in (paths.live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]]
    assert loss[-1] < loss[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Input errors must come before the model loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("diffsketch.training.trainer.load_model", refuse)


def test_bad_inputs_fail_before_the_model_loads(tmp_path, no_model_load):
    paths = prepare(tmp_path)
    params = make_params()
    with pytest.raises(TrainInputError, match="run the analyze stage"):
        run_train(params, TrainPaths(timesteps=tmp_path / "none.json", prior=paths.prior), progress=False)
    other = prepare(tmp_path / "other", model="sd15-random")
    with pytest.raises(TrainInputError, match="analysed for model 'sd15-random'"):
        run_train(params, TrainPaths(timesteps=other.timesteps, prior=paths.prior), progress=False)
    with pytest.raises(TrainInputError, match="fitted with model 'sd15-random'"):
        run_train(params, TrainPaths(timesteps=paths.timesteps, prior=other.prior), progress=False)
    with pytest.raises(TrainInputError, match="sample.steps=6"):
        run_train(make_params(sample={"steps": 6}), paths, progress=False)

    from diffsketch.training.example import ExampleError

    with pytest.raises(ExampleError, match="77"):
        run_train(make_params(example={"prompt": "a horse " * 60}), paths, progress=False)
    with pytest.raises(ExampleError, match="neither a built-in style"):
        run_train(make_params(example={"sketch": "sketchy"}), paths, progress=False)
    with pytest.raises(ExampleError, match="missing.png"):
        run_train(make_params(example={"sketch": str(tmp_path / "missing.png")}), paths, progress=False)
    with pytest.raises(ExampleError, match="style_weights"):
        run_train(make_params(example={"sketch": "hed"}), paths, progress=False)

    from PIL import Image

    Image.new("RGBA", (80, 40), (0, 0, 0, 0)).save(tmp_path / "wide.png")
    with pytest.raises(ExampleError, match="80x40"):
        run_train(make_params(example={"sketch": str(tmp_path / "wide.png")}), paths, progress=False)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ExampleError, match="corrupt.png"):
        run_train(make_params(example={"sketch": str(tmp_path / "corrupt.png")}), paths, progress=False)


def test_drawing_file_in_any_mode_is_accepted(tiny, tmp_path):
    """An RGBA drawing of another size (square, like the generated source) trains."""
    from PIL import Image, ImageDraw

    drawing = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(drawing).line((10, 10, 90, 90), fill=(0, 0, 0, 255), width=3)
    drawing.save(tmp_path / "drawing.png")
    paths = prepare(tmp_path)
    params = make_params(example={"sketch": str(tmp_path / "drawing.png")}, train={"iterations": 1})
    record = run_train(params, paths, progress=False, model=tiny)
    assert record["l1"] > 0


def test_a_drawing_replaced_under_the_same_name_does_not_resume(tiny, tmp_path, caplog):
    """DVC reruns `train` when data/example changes, with the old checkpoints still there (they persist):
    a finished run's checkpoint must not stand in for training on the new drawing."""
    import numpy as np
    from PIL import Image

    from diffsketch.training.generator import load_generator

    paths = prepare(tmp_path)
    drawing = tmp_path / "drawing.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(drawing)
    params = make_params(train={"iterations": 2}, example={"sketch": str(drawing)})
    run_train(params, paths, progress=False, model=tiny)
    first, _ = load_generator(paths.generator)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))).save(drawing)  # another drawing, same file
    with caplog.at_level("WARNING", logger="diffsketch"):
        run_train(params, paths, progress=False, model=tiny)
    assert "changed file example.sketch" in caplog.text
    second, _ = load_generator(paths.generator)
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
