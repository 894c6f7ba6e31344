import pytest

from conftest import REPO
from diffsketch.core import result_key
from diffsketch.core.params import ParamsError, load_params, parse_params


def test_project_params_and_paper_preset_validate():
    smoke = load_params(REPO / "params.yaml")
    assert smoke.model.id == "tiny"
    paper = load_params(REPO / "presets" / "paper.yaml")
    assert (paper.sample.resolution, paper.sample.steps, paper.sample.guidance, paper.sample.eta) == (512, 50, 5.0, 0.0)
    assert "stable-diffusion-v1-4" in paper.model.id


@pytest.mark.parametrize(
    "data, key, hint",
    [
        ({"sample": {"stepz": 3}}, "sample.stepz", "unknown key"),
        ({"bogus": {}}, "bogus", "unknown key"),
        ({"sample": {"steps": "many"}}, "sample.steps", "integer"),
        ({"sample": {"steps": 0}}, "sample.steps", "greater than or equal to 1"),
        ({"sample": {"resolution": 500}}, "sample.resolution", "multiple of 64"),
        ({"sample": {"pool": "half"}}, "sample.pool", "full"),
        ({"sample": {"halves": "left"}}, "sample.halves", "cond"),
        ({"model": {"device": "tpu"}}, "model.device", "cuda"),
        ({"analyze": {"k_min": 9, "k_max": 3}}, "analyze", "k_min"),
    ],
)
def test_invalid_params_name_the_key(data, key, hint):
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    message = str(err.value)
    assert key in message and hint in message


def test_load_params_overrides_and_missing_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sample:\n  steps: 7\n")
    params = load_params(path, ["sample.pool=full", "model.id=tiny", "sample.guidance=1.5"])
    assert params.sample.steps == 7 and params.sample.pool == "full" and params.sample.guidance == 1.5
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    path.write_text("sample: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ParamsError, match="section.key=value"):
        load_params(REPO / "params.yaml", ["steps"])


def test_result_key_tracks_values():
    a, b = parse_params({}), parse_params({"sample": {"steps": 10}})
    key = lambda p: result_key({"sample": p.sample}).digest  # noqa: E731
    assert key(a) == key(parse_params({})) and key(a) != key(b)


@pytest.mark.parametrize("section", ["model", "sample", "analyze", "example", "prior", "train", "pairs", "distill"])
def test_seeds_beyond_torch_range_are_refused_by_name(section):
    with pytest.raises(ParamsError, match=rf"{section}\.seed: Input should be less than or equal to 4294967295"):
        parse_params({section: {"seed": 10**30}})  # torch.manual_seed would overflow at run time
    assert getattr(parse_params({section: {"seed": 2**32 - 1}}), section).seed == 2**32 - 1


def test_yaml_booleans_are_not_taken_for_numbers():
    for section, key in [("train", "iterations"), ("train", "lr"), ("distill", "crop"), ("sample", "guidance")]:
        with pytest.raises(ParamsError, match=rf"{section}\.{key}: expected a number, got the YAML boolean True"):
            parse_params({section: {key: True}})  # `iterations: yes` was 1 iteration
    assert parse_params({"distill": {"crop": None}}).distill.crop is None
    assert parse_params({"train": {"cdst": False}}).train.cdst == "off"  # on/off switches still read YAML's booleans
