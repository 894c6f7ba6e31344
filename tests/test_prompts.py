import pytest

from conftest import REPO
from diffsketch.diffusion.prompts import PromptsError, interleave, load_prompts, plan_trajectories


def test_shipped_prompts_have_ten_classes_of_ten():
    prompts = load_prompts(REPO / "data" / "prompts")
    classes = {p.label for p in prompts}
    assert len(classes) >= 10
    assert all(sum(p.label == c for p in prompts) >= 10 for c in classes)
    assert len({p.text for p in prompts}) == len(prompts), "duplicate prompts"


def test_load_interleave_and_plan(prompts_dir):
    prompts = load_prompts(prompts_dir)
    assert [p.text for p in prompts][:2] == ["a photo of a horse in mud", "a cat on a sofa"]
    order = interleave(prompts)
    assert [p.label for p in order] == ["animals", "food", "vehicles"] * 2
    plan = plan_trajectories(prompts, 8, seed=100)
    assert [t.seed for t in plan] == list(range(100, 108))
    assert plan[6].prompt == plan[0].prompt and plan[1].label == "food"
    single = load_prompts(prompts_dir / "food.txt")
    assert [p.label for p in single] == ["food", "food"]


def test_bad_prompt_sources(tmp_path):
    with pytest.raises(PromptsError, match="does not exist"):
        load_prompts(tmp_path / "missing")
    with pytest.raises(PromptsError, match="no .txt files"):
        load_prompts(tmp_path)
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(PromptsError, match="no prompts"):
        load_prompts(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PromptsError, match="UTF-8"):
        load_prompts(tmp_path / "empty.txt")
