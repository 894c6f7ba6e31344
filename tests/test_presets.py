"""Parameter profiles: `diffsketch preset NAME` writes every key of presets/NAME.yaml."""

import shutil

import pytest
from typer.testing import CliRunner

from conftest import REPO
from diffsketch.cli.main import app
from diffsketch.core.params import load_params

# The authors' code and the reviews (../shared/reference/method.md §1-§6), written out by hand.
AUTHORS = {
    "model.id": "CompVis/stable-diffusion-v1-4",
    "sample.trajectories": 1000,
    "sample.steps": 50,
    "sample.guidance": 5.0,
    "sample.eta": 0.0,
    "sample.resolution": 512,
    "sample.capture": "residual",
    "sample.decode": "pred_x0",
    "analyze.pca_dims": 25,
    "analyze.k": 13,
    "example.prompt": "a photo of a horse in mud",
    "example.seed": 50,
    "example.image": None,
    "example.sketch": "xdog",
    "prior.components": 512,
    "losses.l1": 30,
    "losses.lpips": 15,
    "losses.clip": 30,
    "losses.across": 1,
    "losses.within": 1,
    "losses.clip_model": "ViT-B-32:openai",
    "losses.lpips_net": "alex",
    "train.iterations": 1200,
    "train.batch": 1,
    "train.lr": 1e-4,
    "train.cdst_horizon": 1000,
    "pairs.count": 30000,
    "evaluate.ground_truth": "auto",
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with the project's presets and params.yaml, as the working directory."""
    shutil.copytree(REPO / "presets", tmp_path / "presets")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _value(params, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(params, section), key)


def test_params_yaml_is_the_smoke_preset():
    assert (REPO / "params.yaml").read_text() == (REPO / "presets" / "smoke.yaml").read_text()


def test_paper_preset_holds_the_authors_values():
    paper = load_params(REPO / "presets" / "paper.yaml")
    wrong = {key: _value(paper, key) for key, value in AUTHORS.items() if _value(paper, key) != value}
    assert not wrong


def test_preset_command_writes_every_key(project):
    result = CliRunner().invoke(app, ["preset", "paper"])
    assert result.exit_code == 0, result.output
    written = load_params(project / "params.yaml")
    assert written == load_params(project / "presets" / "paper.yaml")
    assert all(_value(written, key) == value for key, value in AUTHORS.items())
    # a copy of a preset is replaced freely: back to smoke, identical to what was there
    assert CliRunner().invoke(app, ["preset", "smoke"]).exit_code == 0
    assert (project / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_edited_params_are_kept_unless_forced(project):
    edited = (project / "params.yaml").read_text().replace("iterations: 40", "iterations: 41")
    (project / "params.yaml").write_text(edited)
    refused = CliRunner().invoke(app, ["preset", "paper"])
    assert refused.exit_code == 1 and "--force" in refused.output
    assert (project / "params.yaml").read_text() == edited
    forced = CliRunner().invoke(app, ["preset", "paper", "--force"])
    assert forced.exit_code == 0 and "params.yaml.bak" in forced.output
    assert (project / "params.yaml.bak").read_text() == edited
    assert load_params(project / "params.yaml").train.iterations == 1200


def test_unknown_and_invalid_presets(project):
    unknown = CliRunner().invoke(app, ["preset", "fast"])
    assert unknown.exit_code == 1 and "unknown preset 'fast'" in unknown.output and "paper" in unknown.output
    (project / "presets" / "broken.yaml").write_text("train: {lr: -1}\n")
    broken = CliRunner().invoke(app, ["preset", "broken"])
    assert broken.exit_code == 1 and "train.lr" in broken.output
    assert (project / "params.yaml").read_text() == (REPO / "params.yaml").read_text()  # untouched
    listing = CliRunner().invoke(app, ["preset"])
    assert listing.exit_code == 0 and "paper" in listing.output and "smoke" in listing.output
