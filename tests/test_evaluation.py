"""The eval-data and evaluate stages: packaged photos, baselines, scores, report and README results."""

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.core.params import ParamsError, parse_params
from diffsketch.evaluation import baselines
from diffsketch.evaluation.data import PHOTOS, EvalDataError, run_eval_data
from diffsketch.evaluation.protocol import EvalError
from diffsketch.evaluation.report import BEGIN, END, run_evaluate, update_readme
from diffsketch.student.network import StudentLoadError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """data/eval with three packaged photos (one grey, one JPEG)."""
    out = tmp_path_factory.mktemp("data") / "eval"
    run_eval_data(parse_params({"eval_data": {"photos": ["chelsea", "camera", "china"]}}).eval_data, out)
    return out


def _params(eval_dir, **evaluate):
    settings = dict(datasets=[str(eval_dir)], ground_truth="dog", size=48, grid=2)
    settings.update(evaluate)
    return parse_params({"model": {"device": "cpu"}, "example": {"sketch": "data/example/cat_sketch.png"}, "evaluate": settings})


# --- eval-data ------------------------------------------------------------------------------------


def test_eval_data_copies_the_package_files_with_their_licences(eval_dir):
    manifest = json.loads((eval_dir / "manifest.json").read_text())
    assert [m["name"] for m in manifest] == ["chelsea", "camera", "china"]
    for entry in manifest:
        copied = eval_dir / entry["file"]
        assert copied.read_bytes() == PHOTOS[entry["name"]].source_path().read_bytes()
        assert entry["licence"] in (eval_dir / "LICENSES.md").read_text()
    assert (manifest[0]["width"], manifest[0]["height"]) == (451, 300)
    assert "CC BY 2.0" in (eval_dir / "LICENSES.md").read_text()  # china.jpg's licence asks for credit


def test_eval_data_replaces_its_own_folder_and_never_touches_others(tmp_path):
    out = tmp_path / "eval"
    run_eval_data(parse_params({"eval_data": {"photos": ["coins", "coffee"]}}).eval_data, out)
    run_eval_data(parse_params({"eval_data": {"photos": ["coins"]}}).eval_data, out)
    assert sorted(p.name for p in out.iterdir()) == ["LICENSES.md", "coins.png", "manifest.json"]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(EvalDataError, match="not written by eval-data"):
        run_eval_data(parse_params({}).eval_data, mine)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"


def test_eval_params_are_validated():
    with pytest.raises(ParamsError, match="eval_data.photos"):
        parse_params({"eval_data": {"photos": ["eagle"]}})  # needs a download: not offered
    with pytest.raises(ParamsError, match="evaluate.weights.hed"):
        parse_params({"evaluate": {"methods": ["student", "hed"]}})
    with pytest.raises(ParamsError, match="more than once"):
        parse_params({"evaluate": {"methods": ["canny", "canny"]}})
    cfg = parse_params({"evaluate": {"datasets": "photos", "lpips": False}}).evaluate  # YAML `off` is False
    assert cfg.datasets[0].path == "photos" and cfg.lpips == "off"


# --- baselines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(baselines.WEIGHT_FREE))
def test_baselines_draw_dark_lines_on_white(name):
    image = torch.full((3, 40, 40), 0.8)
    image[:, :, 20:] = 0.2  # one vertical edge
    sketch = baselines.baseline(name)(image)
    assert sketch.shape == (1, 40, 40) and sketch.dtype == torch.float32
    assert 0.0 <= float(sketch.min()) and float(sketch.max()) <= 1.0
    assert float(sketch[0, :, 17:23].min()) < 0.5  # ink at the edge
    assert float(sketch[0, 5:35, 3:8].mean()) > 0.9  # paper on the bright flat side


# --- evaluate -------------------------------------------------------------------------------------


def test_evaluate_scores_student_and_baselines(eval_dir, student, tmp_path):
    out = tmp_path / "reports" / "eval"
    result = run_evaluate(_params(eval_dir), student, out, progress=False)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["images"] == 3
    assert set(saved) - {"images"} == {"student", "canny", "sobel", "xdog", "xdog_cemal", "xdog_anime", "lineart"}
    assert "dog" not in saved  # the ground truth's own extractor is left out, and said so
    summary = json.loads((out / "summary.json").read_text())
    assert any("dog left out" in n for n in summary["notes"]) and any("LPIPS skipped" in n for n in summary["notes"])

    with open(out / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 7
    for method, means in saved.items():
        if method == "images":
            continue
        for metric, value in means.items():
            # chamfer and F-score: over the sketches with line pixels only (None when there are none)
            mine = [float(r[metric]) for r in rows if r["method"] == method and (metric not in ("chamfer", "f_score") or r["lines"] == "1")]
            assert value == (pytest.approx(np.mean(mine)) if mine else None), (method, metric)
    assert json.loads((out / "comparison.json").read_text())[0]["method"] == "student"
    assert result.summary["datasets"] == {"eval": {"images": 3, "means": result.means}}

    page = (out / "index.html").read_text()
    assert 'id="means"' in page and 'id="grid"' in page and "dog left out" in page
    assert page.count("data:image/png;base64,") == 2 * (2 + 7)  # grid of 2 photos: photo, truth, 7 methods
    assert "http://" not in page and "https://" not in page  # self-contained
    # the grid as files (read by the ablation report): the same pictures as the page's data URIs
    cells = sorted((out / "grid").iterdir())
    assert [c.name for c in cells] == ["00-camera", "01-chelsea"]  # the first two test photos, by name
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    files = [(cell / f"{name}.png").read_bytes() for cell in cells for name in ["photo", "truth", *result.summary["methods"]]]
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u)))) for u in uris]
    assert len(files) == len(decoded) == 2 * (2 + 7)
    for data, picture in zip(files, decoded):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), picture)


def test_scores_match_a_direct_computation(eval_dir, tmp_path):
    from diffsketch.evaluation import metrics
    from diffsketch.extractor.batch import prepare_image
    from diffsketch.training import styles

    params = _params(eval_dir, methods=["canny"], datasets=[{"path": str(eval_dir), "limit": 1}])
    result = run_evaluate(params, None, tmp_path / "eval", progress=False)
    image = prepare_image(eval_dir / "camera.png", 48, 11)  # sorted by name: camera.png first
    truth, pred = styles.dog(image)[0].numpy(), styles.canny(image)[0].numpy()
    assert result.rows[0]["image"] == "eval/camera.png"
    assert result.means["canny"] == pytest.approx(metrics.score(truth, pred))


def test_a_sketch_without_line_pixels_is_no_lines_never_averaged_in_or_ranked(eval_dir, tmp_path, monkeypatch):
    from diffsketch.evaluation import baselines as base
    from diffsketch.evaluation.report import means_table_html, results_markdown

    blank = lambda image: torch.ones(1, *image.shape[-2:])
    real = base.baseline
    monkeypatch.setattr(base, "baseline", lambda name, weights: blank if name == "sobel" else real(name, weights))
    result = run_evaluate(_params(eval_dir, methods=["canny", "sobel"]), None, tmp_path / "eval", progress=False)
    sobel = [r for r in result.rows if r["method"] == "sobel"]
    assert all(r["lines"] == 0 and r["f_score"] == 0.0 and r["chamfer"] == pytest.approx(np.hypot(48, 48), rel=0.3) for r in sobel)  # sentinels
    assert result.means["sobel"]["chamfer"] is None and result.means["sobel"]["f_score"] is None
    assert result.means["sobel"]["ssim"] == pytest.approx(np.mean([r["ssim"] for r in sobel]))  # other metrics still averaged
    table = means_table_html(result.means, result.summary["seconds_per_image"])
    sobel_row = next(line for line in table.splitlines() if line.startswith("<tr><td>sobel"))
    assert sobel_row.count("<td>no lines</td>") == 2  # never bold, never a number
    assert "| sobel |" in results_markdown(result.summary, result.metrics_json()) and "no lines" in results_markdown(result.summary, result.metrics_json())


def test_a_tie_is_not_bold():
    from diffsketch.evaluation.report import means_table_html

    tied = means_table_html({"a": {"ssim": 0.5, "chamfer": 2.0}, "b": {"ssim": 0.5, "chamfer": 3.0}}, {})
    assert tied.count("<strong>") == 1 and "<strong>2.0000</strong>" in tied  # ssim ties: neither is the best


def test_the_generator_is_scored_directly_as_the_training_example_path_sketches_a_photo(teacher, tmp_path, tiny):
    from diffsketch.core.params import parse_params as parse
    from diffsketch.diffusion.features import unet_layers, vae_layers
    from diffsketch.training import build_example, load_generator

    generator_path, _ = teacher  # random weights, resolution 64, 4 steps, timesteps [0, 2]
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / "square.png")  # the generator's size: no resizing
    params = parse({"model": {"id": "tiny", "device": "cpu"}, "sample": {"resolution": 64, "steps": 4, "decode": "latent"},
                    "example": {"sketch": "dog", "image": str(photos / "square.png"), "prompt": "a photo"},
                    "evaluate": {"datasets": [str(photos)], "ground_truth": "dog", "size": 64, "grid": 1, "methods": ["canny"]}})  # fmt: skip
    result = run_evaluate(params, None, tmp_path / "eval", progress=False, generator_path=generator_path)
    assert list(result.means) == ["generator", "canny"] and result.summary["methods"] == ["generator", "canny"]
    assert (tmp_path / "eval" / "grid" / "00-square" / "generator.png").is_file()
    # the second route: the photo through the training's example path (DDIM inversion with the prompt, regeneration)
    generator, meta = load_generator(generator_path)
    example = build_example(tiny, params, unet_layers(tiny.unet.config, 64, 8), vae_layers(tiny.vae.config, 64), meta["ddim_indices"], progress=False)
    with torch.no_grad():
        expected = generator.eval()(example.inputs)[0, 0].numpy()
    got = np.asarray(Image.open(tmp_path / "eval" / "grid" / "00-square" / "generator.png"), dtype=np.float64) / 255
    assert got.shape == expected.shape == (64, 64)
    assert np.abs(got - expected).max() <= 1 / 255 + 1e-3  # the grid's PNG: uint8 rounding


def test_bad_inputs_fail_before_any_image_is_read(eval_dir, student, tmp_path, monkeypatch):
    import diffsketch.evaluation.protocol as evaluation

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read before the inputs were checked")

    monkeypatch.setattr(evaluation, "prepare_image", no_reading)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier run's results survive a failed one

    with pytest.raises(EvalError, match="drawing file"):
        run_evaluate(_params(eval_dir, ground_truth="auto"), student, out)
    with pytest.raises(EvalError, match="not a folder"):
        run_evaluate(_params(tmp_path / "nowhere"), student, out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalError, match="holds no images"):
        run_evaluate(_params(tmp_path / "empty"), student, out)
    with pytest.raises(StudentLoadError, match="not found"):
        run_evaluate(_params(eval_dir), tmp_path / "missing.safetensors", out)
    with pytest.raises(EvalError, match="evaluate.weights.hed"):
        run_evaluate(_params(eval_dir, ground_truth="hed"), student, out)
    with pytest.raises(EvalError, match="is not a file"):
        run_evaluate(_params(eval_dir, methods=["student", "anime"], weights={"anime": str(tmp_path / "no.pth")}), student, out)
    with pytest.raises(EvalError, match="nothing to compare"):
        run_evaluate(_params(eval_dir, methods=["dog"]), student, out)
    monkeypatch.setattr("diffsketch.training.losses.alexnet_cached", lambda: None)
    with pytest.raises(EvalError, match="AlexNet"):
        run_evaluate(_params(eval_dir, lpips="on"), student, out)
    assert (out / "metrics.json").read_text() == "{}"


def test_unreadable_images_are_skipped_and_listed(eval_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes((eval_dir / "camera.png").read_bytes())
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    result = run_evaluate(_params(folder, methods=["sobel"]), None, tmp_path / "eval", progress=False)
    assert result.summary["images"] == 1 and "b.jpg" in result.summary["skipped"][0]
    assert "b.jpg" in (tmp_path / "eval" / "index.html").read_text()

    (folder / "a.png").unlink()
    with pytest.raises(EvalError, match="no test image could be evaluated"):
        run_evaluate(_params(folder, methods=["sobel"]), None, tmp_path / "eval2", progress=False)


def test_cli_evaluate_and_readme_results(eval_dir, student, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {device: cpu}\nexample: {sketch: xdog}\n"
        f"evaluate: {{datasets: [{{path: {eval_dir}, limit: 2, name: packaged}}], size: 40, methods: [student, canny, xdog]}}\n"
    )
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "-p", str(params), "--student", str(student), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "ground truth xdog" in result.output and "student" in result.output

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n## Results\n{BEGIN}\nold table\n{END}\n\n## Next\n")
    result = runner.invoke(app, ["results", "--reports", str(out), "--readme", str(readme)])
    assert result.exit_code == 0, result.output
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title") and text.endswith("## Next\n")
    assert "| student |" in text and "| canny |" in text and "xdog left out" in text
    assert "Ground truth: `xdog` on 2 photos (packaged)" in text
    update_readme(readme, out)  # idempotent
    assert readme.read_text() == text

    readme.write_text("no markers here\n")
    result = runner.invoke(app, ["results", "--reports", str(out), "--readme", str(readme)])
    assert result.exit_code == 1 and "results:begin" in result.output
    result = runner.invoke(app, ["results", "--reports", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "run the evaluate stage first" in result.output


def test_lpips_column_when_its_weights_are_there(eval_dir, tmp_path, monkeypatch):
    from diffsketch.training import losses

    random_backbone = losses.load_lpips("random")  # stands in for the cached AlexNet, which is not available offline
    monkeypatch.setattr(losses, "alexnet_cached", lambda: tmp_path / "alexnet.pth")
    monkeypatch.setattr(losses, "load_lpips", lambda net, device="cpu": random_backbone)
    params = _params(eval_dir, methods=["canny", "sobel"], lpips="on", datasets=[{"path": str(eval_dir), "limit": 1}])
    result = run_evaluate(params, None, tmp_path / "eval", progress=False)
    assert set(result.means["canny"]) == {"ssim", "psnr", "lpips", "chamfer", "f_score"}
    assert result.means["canny"]["lpips"] > 0 and result.summary["lpips"] is True
    assert "lpips ↓" in (tmp_path / "eval" / "index.html").read_text()
    assert not any("LPIPS" in note for note in result.summary["notes"])


def test_evaluation_never_imports_its_renderer():
    """One direction: eval_report imports evaluation; evaluation (computing) imports no renderer, not even lazily."""
    import ast
    import subprocess
    import sys

    from conftest import REPO

    tree = ast.parse((REPO / "diffsketch" / "evaluation" / "protocol.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.endswith(("eval_report", "report"))}, imported
    code = "import sys, diffsketch.evaluation.protocol; print('diffsketch.evaluation.report' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
