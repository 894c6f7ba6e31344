"""The one rule for what a result depends on (diffsketch.core.keys), as each stage applies it.

Each setting that changes numbers changes its stage's key when changed alone; each setting left out
(core.keys.NEUTRAL) does not; dvc.yaml's stage params agree with both; inputs enter by content, never by
path; a changed input is named."""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, small_params
from diffsketch.core import NEUTRAL, PROGRESS, ResultKey, content_hash, result_key
from diffsketch.core.params import parse_params
from diffsketch.diffusion import load_prompts, model_terms, plan_trajectories
from diffsketch.store.collect import sample_key
from diffsketch.student.pairs import pairs_key
from diffsketch.training.trainer import train_key

# one other valid value for each setting a key holds (changed alone, it must change the key)
CHANGES = {
    "model.dtype": "bfloat16", "model.seed": 1,
    "sample.trajectories": 5, "sample.steps": 5, "sample.guidance": 3.0, "sample.eta": 0.5, "sample.resolution": 128,
    "sample.pool": 4, "sample.halves": "both", "sample.capture": "output", "sample.decode": "latent", "sample.seed": 1,
    "example.prompt": "a dog", "example.seed": 1, "example.sketch": "canny",
    "losses.l1": 1.0, "losses.lpips": 2.0, "losses.clip": 3.0, "losses.across": 0.5, "losses.within": 0.5,
    "train.batch": 2, "train.lr": 0.01, "train.cdst_horizon": 7, "train.cdst": "off", "train.vae_fusion": "off",
    "train.aggregation": "one", "train.seed": 1,
    "pairs.count": 7, "pairs.seed": 1,
}  # fmt: skip
NEUTRAL_CHANGES = {
    "model.device": "auto", "model.compile": "on", "sample.batch_size": 1, "pairs.batch_size": 1, "train.iterations": 9,
    "train.checkpoint_every": 1, "train.sample_every": 1, "train.max_skips": 2, "analyze.device": "cpu",
    "launch.processes": 2,
}  # fmt: skip


def _set(settings: dict, dotted: str, value) -> dict:
    section, name = dotted.split(".")
    return {**settings, section: {**settings.get(section, {}), name: value}}


@pytest.fixture
def inputs(tmp_path, prompts_dir):
    (tmp_path / "prior.safetensors").write_bytes(b"prior")
    (tmp_path / "generator.safetensors").write_bytes(b"generator")
    base = {"model": {"id": "tiny", "device": "cpu"}, "sample": {"prompts": str(prompts_dir), "trajectories": 4},
            "example": {"sketch": "xdog", "image": None}, "losses": {"clip_model": "tiny", "lpips_net": "random"}}  # fmt: skip
    return tmp_path, base


def _keys(tmp_path, settings) -> dict[str, ResultKey]:
    params = parse_params(settings)
    plan = plan_trajectories(load_prompts(params.sample.prompts), params.sample.trajectories, params.sample.seed)
    return {
        "sample": sample_key(params, plan),
        "train": train_key(params, [0, 2], tmp_path / "prior.safetensors", "tiny", "random", "fp32"),
        "pairs": pairs_key(params, tmp_path / "generator.safetensors", tmp_path / "prior.safetensors"),
    }


def _dvc_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: [p for p in spec.get("params", []) if isinstance(p, str)] for name, spec in stages.items()}


def _listed(name: str, listed: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in listed)


def test_each_setting_that_changes_numbers_changes_its_keys_alone(inputs):
    tmp_path, base = inputs
    before = _keys(tmp_path, base)
    dvc = _dvc_params()
    for dotted, value in CHANGES.items():
        after = _keys(tmp_path, _set(base, dotted, value))
        changed = {stage for stage in before if before[stage].digest != after[stage].digest}
        assert changed, dotted
        for stage in changed:  # named in the change, and listed in that stage's dvc.yaml params
            assert any(c.startswith(dotted) or c.startswith("changed input trajectories") for c in after[stage].changes(before[stage].record)), (dotted, stage)
            assert _listed(dotted, dvc[stage]), f"{dotted} changes the {stage} key but dvc.yaml does not list it"


def test_settings_that_cannot_change_numbers_change_no_key_and_rerun_no_stage(inputs):
    tmp_path, base = inputs
    before = _keys(tmp_path, base)
    for dotted, value in NEUTRAL_CHANGES.items():
        after = _keys(tmp_path, _set(base, dotted, value))
        for stage in before:
            assert before[stage].digest == after[stage].digest, (dotted, stage)
    for stage, listed in _dvc_params().items():
        assert not [n for n in [*NEUTRAL] if _listed(n, listed)], stage
    assert set(NEUTRAL_CHANGES) - {"model.compile"} <= set(NEUTRAL) | set(PROGRESS)
    for dotted in PROGRESS:  # out of the key, but the stage reruns (and resumes below the new count)
        assert _listed(dotted, _dvc_params()[dotted.split(".")[0]])


def test_input_files_enter_by_content_not_by_path(inputs):
    tmp_path, base = inputs
    before = _keys(tmp_path, base)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("prior.safetensors", "generator.safetensors"):
        shutil.copy(tmp_path / name, moved / name)
    params = parse_params(base)
    assert train_key(params, [0, 2], moved / "prior.safetensors", "tiny", "random", "fp32").digest == before["train"].digest
    assert pairs_key(params, moved / "generator.safetensors", moved / "prior.safetensors").digest == before["pairs"].digest
    (moved / "prior.safetensors").write_bytes(b"another prior")
    changed = train_key(params, [0, 2], moved / "prior.safetensors", "tiny", "random", "fp32")
    assert changed.change_summary(before["train"].record) == ("changed input prior", True)
    # the prompts enter as the planned trajectories' text: a copied folder gives the same store key
    copy = tmp_path / "prompts-copy"
    shutil.copytree(base["sample"]["prompts"], copy)
    assert _keys(tmp_path, _set(base, "sample.prompts", str(copy)))["sample"].digest == before["sample"].digest
    (copy / "food.txt").write_text("a bowl of soup\na slice of pizza\n")
    assert _keys(tmp_path, _set(base, "sample.prompts", str(copy)))["sample"].digest != before["sample"].digest


def test_resolved_networks_enter_the_train_key(inputs):
    tmp_path, base = inputs
    params = parse_params(base)
    keys = {clip: train_key(params, [0, 2], tmp_path / "prior.safetensors", clip, "random", "fp32") for clip in ("tiny", "ViT-B-32:openai")}
    assert keys["tiny"].digest != keys["ViT-B-32:openai"].digest
    assert keys["tiny"].settings["losses.clip_model"] == "tiny"  # 'auto' never enters a key
    lpips = {net: train_key(params, [0, 2], tmp_path / "prior.safetensors", "tiny", net, "fp32") for net in ("alex", "random")}
    assert lpips["alex"].digest != lpips["random"].digest


def test_a_local_model_folder_is_keyed_by_its_files(tiny, tmp_path):
    from diffsketch.core import ModelConfig

    folder = tmp_path / "sd"
    tiny.as_pipeline().save_pretrained(folder)
    settings, files = model_terms(ModelConfig(id=str(folder), device="cpu"))
    weights = "model/unet/diffusion_pytorch_model.safetensors"
    assert files[weights] == hashlib.sha256((folder / "unet/diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()[:16]
    assert "model.id" not in settings and settings["model.dtype"] == "float32"
    moved = tmp_path / "moved" / "sd"
    shutil.copytree(folder, moved)
    assert model_terms(ModelConfig(id=str(moved), device="cpu"))[1] == files  # a path never enters
    before = result_key({}, inputs=files)
    with open(folder / "unet/diffusion_pytorch_model.safetensors", "ab") as f:
        f.write(b"\0")  # other weights under the same name
    after = result_key({}, inputs=model_terms(ModelConfig(id=str(folder), device="cpu"))[1])
    assert after.change_summary(before.record) == (f"changed file {weights}", True)


def test_a_hub_model_is_keyed_by_its_resolved_revision(tmp_path, monkeypatch):
    import huggingface_hub

    from diffsketch.core import ModelConfig

    repo = tmp_path / "models--someone--sd"
    for commit in ("1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    revisions = []
    for commit in ("1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"):
        (repo / "refs" / "main").write_text(commit)
        settings, inputs = model_terms(ModelConfig(id="someone/sd", device="cpu"))
        assert settings["model.id"] == "someone/sd"
        revisions.append(inputs["model revision"])
    assert revisions == ["1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"]


def test_resume_point_names_a_changed_weight_file_and_starts_afresh(tmp_path, caplog):
    import torch

    from diffsketch.training.checkpoint import resume_point, save_checkpoint

    old = ResultKey({"train.lr": 0.001}, {"model/unet/diffusion_pytorch_model.safetensors": "aaaa"})
    new = ResultKey({"train.lr": 0.001}, {"model/unet/diffusion_pytorch_model.safetensors": "bbbb"})
    save_checkpoint(tmp_path / old.digest, 4, {"w": torch.zeros(1)}, {"key": old.digest, "record": old.record})
    with caplog.at_level(logging.INFO, logger="diffsketch"):
        folder, checkpoint = resume_point(tmp_path, new, 4, "train")
    assert checkpoint is None and folder == tmp_path / new.digest
    (record,) = [r for r in caplog.records if "not resuming" in r.getMessage()]
    assert record.levelno == logging.WARNING and "changed file model/unet/diffusion_pytorch_model.safetensors" in record.getMessage()
    assert (tmp_path / old.digest / "checkpoint-000004.safetensors").is_file()  # kept
    # the same key, asked for fewer iterations than its latest checkpoint: not that one
    save_checkpoint(tmp_path / new.digest, 2, {"w": torch.zeros(1)}, {"key": new.digest})
    save_checkpoint(tmp_path / new.digest, 4, {"w": torch.ones(1)}, {"key": new.digest})
    assert resume_point(tmp_path, new, 3, "train")[1].name == "checkpoint-000002.safetensors"
    assert resume_point(tmp_path, new, 4, "train")[1].name == "checkpoint-000004.safetensors"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffsketch"):
        assert resume_point(tmp_path, new, 1, "train")[1] is None
    # only the own key's checkpoints past the target are named: the other key's input did not change now
    assert [r.getMessage() for r in caplog.records] == [
        "train: checkpoint-000004.safetensors is past the requested 1 iterations; it is kept, and the run starts from the beginning"
    ]
    save_checkpoint(tmp_path / new.digest, 3, {"w": torch.ones(1)}, {"key": new.digest})  # a shorter run after a longer one
    names = sorted(p.name for p in (tmp_path / new.digest).iterdir())
    assert names == ["checkpoint-000002.safetensors", "checkpoint-000003.safetensors", "checkpoint-000004.safetensors"]


def test_sample_does_not_resume_a_store_made_with_other_model_weights(tiny, prompts_dir, tmp_path, caplog):
    from diffsketch.diffusion.models import build_random
    from diffsketch.store import zarr_store as store
    from diffsketch.store.collect import run_sample

    folder = tmp_path / "sd"
    tiny.as_pipeline().save_pretrained(folder)
    settings = small_params(prompts_dir, trajectories=2, steps=2).model_dump(mode="json")
    settings["model"] = {"id": str(folder), "device": "cpu"}
    params = parse_params(settings)
    out = tmp_path / "f.zarr"
    run_sample(params, out, progress=False)
    build_random("tiny", seed=5)["unet"].save_pretrained(folder / "unet")  # new weights, same file names
    with caplog.at_level(logging.WARNING, logger="diffsketch"):
        run_sample(params, out, progress=False)
    assert "changed file model/unet/diffusion_pytorch_model.safetensors" in caplog.text
    assert len(list((tmp_path / "f.zarr.kept").iterdir())) == 1
    assert store.complete_mask(store.open_store(out)).all()


def test_content_hash_of_a_folder_covers_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    first = content_hash(tmp_path / "a")
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert content_hash(tmp_path / "a") != first
    (tmp_path / "a" / "y.txt").rename(tmp_path / "a" / "x.txt")
    assert content_hash(tmp_path / "a") == first
    expected = hashlib.sha256(f"x.txt\0{hashlib.sha256(b'1').hexdigest()[:16]}\0".encode()).hexdigest()[:16]
    assert first == expected
    assert json.loads(result_key({"s": {"a": 1}}).record) == {"settings": {"s.a": 1}, "inputs": {}}
    assert Path(REPO / "dvc.yaml").is_file()


def test_checkpoints_command_lists_kept_work_and_removes_what_no_output_uses(tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    from diffsketch.cli.main import app
    from diffsketch.training.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    used, old = "a" * 16, "b" * 16
    save_checkpoint(Path("models/checkpoints") / used, 2, {"w": torch.zeros(10)}, {"key": used})
    save_checkpoint(Path("models/checkpoints") / old, 4, {"w": torch.zeros(1000)}, {"key": old})
    Path("models/generator.json").write_text(json.dumps({"meta": {"key": used}}))
    kept = Path("data/features.zarr.kept") / ("c" * 16)
    kept.mkdir(parents=True)
    (kept / "zarr.json").write_bytes(b"x" * 5000)
    old_bytes = (Path("models/checkpoints") / old / "checkpoint-000004.safetensors").stat().st_size

    listed = CliRunner().invoke(app, ["checkpoints"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert any(line.startswith("in use") and used in line and "iteration 2" in line for line in lines)
    assert any(line.startswith("unused") and old in line and "iteration 4" in line for line in lines)
    assert any(line.startswith("unused") and "features.zarr.kept" in line for line in lines)
    assert "2 unused" in lines[-1]
    assert (Path("models/checkpoints") / old).is_dir()  # listing removes nothing

    removed = CliRunner().invoke(app, ["checkpoints", "--remove"])
    assert removed.exit_code == 0, removed.output
    freed = old_bytes + 5000
    assert f"removed 2 unused, freed {freed / 1000:.1f} KB" in removed.output
    assert (Path("models/checkpoints") / used).is_dir() and not (Path("models/checkpoints") / old).exists()
    assert not Path("data/features.zarr.kept").exists()


def test_the_evaluation_page_warns_when_the_student_was_made_with_random_loss_networks():
    from test_report_browser import _wide_evaluation

    from diffsketch.evaluation.report import render_html

    result = _wide_evaluation()
    result.summary["student"] = {"networks": {"train_clip": "ViT-B-32:openai", "train_lpips": "alex", "distill_lpips": "alex"}}
    assert 'id="random-networks"' not in render_html(result)
    result.summary["student"] = {"networks": {"train_clip": "tiny", "train_lpips": "alex", "distill_lpips": "random"}}
    page = render_html(result)
    note = page[page.index('id="random-networks"'):]
    note = note[: note.index("</p>")]
    assert "tiny random CLIP" in note and "distillation&#x27;s LPIPS" in note and "generator&#x27;s LPIPS" not in note


def test_train_does_not_resume_checkpoints_made_with_other_model_weights(tiny, tmp_path, caplog):
    """`train` on a local model folder: new weights under the same file names start afresh, naming the file,
    and keep the old run's checkpoints (its key folder); the same weights again resume the first run."""
    import torch

    from diffsketch.diffusion.models import build_random
    from diffsketch.training import run_train
    from diffsketch.training.generator import load_generator
    from test_training import make_params, prepare

    folder = tmp_path / "sd"
    tiny.as_pipeline().save_pretrained(folder)
    paths = prepare(tmp_path / "run", model=str(folder))
    params = make_params(model={"id": str(folder), "device": "cpu"}, train={"iterations": 2, "checkpoint_every": 2})
    run_train(params, paths, progress=False)
    (first_key,) = [p.name for p in paths.checkpoints.iterdir()]
    first, _ = load_generator(paths.generator)
    original = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    build_random("tiny", seed=5)["unet"].save_pretrained(folder / "unet")  # new weights, same file names
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffsketch"):
        run_train(params, paths, progress=False)
    (warning,) = [r for r in caplog.records if "not resuming" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "changed file model/unet/diffusion_pytorch_model.safetensors" in warning.getMessage()
    keys = sorted(p.name for p in paths.checkpoints.iterdir())
    assert len(keys) == 2 and first_key in keys  # the first run's checkpoints are kept
    second, _ = load_generator(paths.generator)
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(original)  # the old weights back
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffsketch"):
        run_train(params, paths, progress=False)
    assert not [r for r in caplog.records if "not resuming" in r.getMessage()]
    again, _ = load_generator(paths.generator)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
