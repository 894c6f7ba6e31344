"""The extractor API (`from diffsketch import SketchExtractor`), style folders, backends and SVG output.

The oracle for every check is the student's own ``Student.forward`` in fp32 on ``read_rgb`` of the
file, computed here independently of the extractor's code path.
"""

import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from diffsketch.evaluation import metrics
from diffsketch.cli.main import app
from diffsketch.evaluation.data import PHOTOS
from diffsketch.student.network import StudentLoadError, load_student
from diffsketch.core.images import read_rgb

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def photos():
    """Every packaged photo's path (diffsketch.evaluation.data): PNG and JPEG, colour and grey."""
    return {name: photo.source_path() for name, photo in PHOTOS.items()}


@pytest.fixture(scope="module")
def small(photos, tmp_path_factory):
    """The packaged photos downscaled to a long side of 160 px, saved as PNG (fast to sketch)."""
    folder = tmp_path_factory.mktemp("small")
    out = {}
    for name, path in photos.items():
        with Image.open(path) as im:
            im = im.copy()
            im.thumbnail((160, 160))
            out[name] = folder / f"{name}.png"
            im.save(out[name])
    return out


def oracle(student, source) -> np.ndarray:
    """The fp32 sketch straight from Student.forward."""
    model, _ = load_student(student)
    image = read_rgb(source) if not isinstance(source, torch.Tensor) else source
    with torch.inference_mode():
        return model(image[None])[0, 0].numpy()


def as_grey(sketch: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(sketch, 0, 1) * 255).astype(np.int64)


@pytest.fixture(scope="module")
def fp32(student):
    from diffsketch import SketchExtractor

    return SketchExtractor.load(student, "cpu", "torch", precision="fp32")


def test_import_is_light():
    code = "import sys, diffsketch; assert 'torch' not in sys.modules, 'torch imported'; print(diffsketch.SketchExtractor.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SketchExtractor"


def test_every_input_type_gives_the_sketch_at_the_input_size(fp32, student, small):
    path = small["chelsea"]
    expected = as_grey(oracle(student, path))
    with Image.open(path) as im:
        pil = im.convert("RGB")
    rgb = np.array(pil)
    inputs = {
        "str": str(path), "Path": path, "PIL": pil, "uint8 array": rgb, "float array": rgb.astype(np.float32) / 255,
        "uint16 array": rgb.astype(np.uint16) * 257, "RGBA array": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    }  # fmt: skip
    for kind, value in inputs.items():
        out = fp32(value)
        assert isinstance(out, Image.Image) and out.mode == "L", kind
        assert out.size == pil.size, kind  # (width, height) of the input
        assert np.abs(np.asarray(out).astype(np.int64) - expected).max() <= 1, kind
    grey = np.array(pil.convert("L"))
    from_grey = np.asarray(fp32(grey)).astype(np.int64)
    assert np.abs(from_grey - as_grey(oracle(student, torch.from_numpy(grey).float().div(255).expand(3, -1, -1)))).max() <= 1


def test_exif_orientation_applies_to_files_and_bytes_only(fp32, student, small, tmp_path):
    """A phone photo stored 160x106 with EXIF orientation 6 (shown turned 90 degrees clockwise): a path
    and bytes are sketched upright; a PIL image and an array are taken as they are, so a PIL image the
    caller has rotated is not rotated a second time. Oracle: the stored pixels turned by numpy."""
    from diffsketch.core.images import ImageError

    with Image.open(small["chelsea"]) as im:
        stored = np.array(im.convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    upright = np.ascontiguousarray(np.rot90(stored, k=-1))  # k=-1: clockwise

    def tensor(pixels):
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255

    by_hand, as_stored = as_grey(oracle(student, tensor(upright))), as_grey(oracle(student, tensor(stored)))

    def check(value, expected, kind):
        out = np.asarray(fp32(value)).astype(np.int64)
        assert out.shape == expected.shape, kind
        assert np.abs(out - expected).max() <= 1, kind

    assert by_hand.shape == (160, 106) and as_stored.shape == (106, 160)
    check(path, by_hand, "Path")
    check(str(path), by_hand, "str")
    check(path.read_bytes(), by_hand, "bytes")
    check(bytearray(path.read_bytes()), by_hand, "bytearray")
    with Image.open(path) as opened:
        assert opened.getexif()[0x0112] == 6
        check(opened, as_stored, "PIL image as opened: taken as it is")
        turned = opened.rotate(-90, expand=True)  # the caller uprights it by hand (PIL: counter-clockwise degrees)
        assert turned.getexif().get(0x0112) == 6  # ... and the tag travels with it
        check(turned, by_hand, "PIL image rotated by the caller")
        from PIL import ImageOps

        check(ImageOps.exif_transpose(opened), by_hand, "PIL image uprighted by exif_transpose")
    check(stored, as_stored, "array")
    check(upright, by_hand, "array turned by the caller")
    with pytest.raises(ImageError, match="not a readable image"):
        fp32(b"not an image at all")


def test_a_list_gives_a_list_and_batches_equal_one_by_one(student, small):
    from diffsketch import SketchExtractor

    names = ["astronaut", "coffee", "astronaut", "camera", "chelsea", "coins"]
    batched = SketchExtractor.load(student, "cpu", batch_size=8)([small[n] for n in names])
    single = SketchExtractor.load(student, "cpu", batch_size=1)
    assert isinstance(batched, list) and len(batched) == len(names)
    for name, sketch in zip(names, batched):
        alone = single(small[name])
        assert sketch.size == alone.size
        assert np.abs(np.asarray(sketch).astype(int) - np.asarray(alone).astype(int)).max() <= 1, name
    assert np.array_equal(np.asarray(batched[0]), np.asarray(batched[2]))
    assert np.abs(np.asarray(batched[0]).astype(int) - np.asarray(batched[1].resize(batched[0].size)).astype(int)).max() > 10


def test_size_threshold_and_transparent(fp32, student, photos):
    capped = fp32(photos["coffee"], size=200)  # 600 x 400 -> 200 x 133
    assert capped.size == (200, 133)
    binary = np.asarray(fp32(photos["coins"], threshold=0.5, size=128))
    assert set(np.unique(binary)) <= {0, 255}
    grey = np.asarray(fp32(photos["coins"], size=128)).astype(int)
    assert np.array_equal(binary == 0, grey < 127.5)
    rgba = np.asarray(fp32(photos["coins"], size=128, transparent=True))
    assert rgba.shape[2] == 4 and np.array_equal(rgba[..., 3], 255 - grey) and not rgba[..., :3].any()
    from diffsketch.extractor.batch import ExtractError

    with pytest.raises(ExtractError, match="between 0 and 1"):
        fp32(photos["coins"], threshold=1.5)
    with pytest.raises(ExtractError, match="cannot sketch a dict"):
        fp32({})
    with pytest.raises(ExtractError, match="at least 5 px"):
        fp32(np.zeros((3, 40), np.uint8))


def test_cli_and_api_give_identical_files(student, small, tmp_path):
    from diffsketch import SketchExtractor

    names = ["astronaut", "chelsea", "coins"]
    for fmt in ("png", "svg"):
        out = tmp_path / fmt
        args = ["extract", *[str(small[n]) for n in names], "-o", str(out), "-m", str(student), "--no-progress", "--device", "cpu",
                "--format", fmt, "--threshold", "0.5"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        extractor = SketchExtractor.load(student, "cpu")
        for name in names:
            if fmt == "png":
                api = tmp_path / f"{name}_api.png"
                extractor(small[name], threshold=0.5).save(api)
                assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), np.asarray(Image.open(api)))
                assert (out / f"{name}.png").read_bytes() == api.read_bytes()
            else:
                assert (out / f"{name}.svg").read_text() == extractor.svg(small[name], threshold=0.5)


def test_svg_renders_back_to_the_png_lines(photos, small, fp32):
    """Tracing keeps the lines: vtracer's SVG, rendered by resvg, against the PNG's line pixels.

    The sketches are XDoG line drawings of the packaged photos (at 256 px): line art like a trained
    student's. (The random test student draws salt-and-pepper noise, which no tracer keeps pixel
    for pixel; its SVGs are checked for size and for CLI = API.)
    """
    from diffsketch.extractor.api import render_svg, resize_capped, sketch_to_png, sketch_to_svg
    from diffsketch.training.styles import xdog

    for name, path in photos.items():
        sketch = xdog(resize_capped(read_rgb(path), 256))[0].numpy()
        png = np.asarray(sketch_to_png(sketch, threshold=0.5)).astype(np.float32) / 255
        rendered = render_svg(sketch_to_svg(sketch, threshold=0.5))
        assert rendered.shape == png.shape, name
        truth, traced = metrics.line_mask(png, 0.5), metrics.line_mask(rendered, 0.5)
        assert 0.01 < truth.mean() < 0.9, name  # ink and paper, not a blank or black page
        assert metrics.f_score(truth, traced, 1.0) >= 0.9, name
    svg = fp32.svg(small["coins"])
    with Image.open(small["coins"]) as im:
        assert f'width="{im.width}" height="{im.height}"' in svg and render_svg(svg).shape == (im.height, im.width)


def test_backends_agree_on_the_packaged_photos(student, small, tmp_path):
    from diffsketch import SketchExtractor
    from diffsketch.extractor.api import cpu_bf16_capable

    folder = tmp_path / "style"
    folder.mkdir()
    shutil.copy(student, folder / "student.safetensors")
    shutil.copy(student.with_suffix(".json"), folder / "student.json")
    onnx = SketchExtractor.load(student, "cpu", "onnx")  # a bare safetensors: exported on the fly
    extractors = {"torch fp32": SketchExtractor.load(folder, "cpu", "torch", precision="fp32"), "onnx fp32": onnx}
    if cpu_bf16_capable():
        extractors["torch bf16"] = SketchExtractor.load(folder, "cpu", "torch", precision="bf16")
        assert SketchExtractor.load(folder, "cpu").precision == "bf16"  # auto picks bf16 here
    for name, path in small.items():
        reference = oracle(student, path)
        threshold = float(np.median(reference))  # half the pixels are lines: a strict test
        for label, extractor in extractors.items():
            got = extractor.arrays([path])[0]
            diff = float(np.abs(got - reference).max())
            if "fp32" in label:
                assert diff <= 1e-3, (label, name, diff)
            else:
                assert diff <= 0.02, (label, name, diff)
                f = metrics.f_score(metrics.line_mask(reference, threshold), metrics.line_mask(got, threshold), 1.0)
                assert f >= 0.99, (label, name, f)


def test_loading_refuses_pickles_and_names_the_fix(tmp_path, student):
    from diffsketch import SketchExtractor
    from diffsketch.extractor.batch import ExtractError

    torch.save({"x": torch.zeros(1)}, tmp_path / "student.pt")
    with pytest.raises(StudentLoadError, match="pickle"):
        SketchExtractor.load(tmp_path / "student.pt")
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tmp_path / "student.pt", folder / "model.ckpt")
    with pytest.raises(StudentLoadError, match="pickle"):
        SketchExtractor.load(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudentLoadError, match="not a style folder"):
        SketchExtractor.load(tmp_path / "empty")
    with pytest.raises(StudentLoadError, match="not found"):
        SketchExtractor.load(tmp_path / "missing.safetensors")
    with pytest.raises(ExtractError, match="auto, torch, onnx"):
        SketchExtractor.load(student, backend="tensorrt")
    with pytest.raises(ExtractError, match="no bf16"):
        SketchExtractor.load(student, backend="onnx", precision="bf16")
    result = runner.invoke(app, ["extract", str(student), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "student.pt")])
    assert result.exit_code == 1 and "pickle" in result.output and "Traceback" not in result.output


def test_export_style_folder_loads_everywhere(student, small, tmp_path, monkeypatch):
    from diffsketch import SketchExtractor

    monkeypatch.chdir(REPO)  # params.yaml names the example files relative to the project
    reports = tmp_path / "eval"
    reports.mkdir()
    (reports / "summary.json").write_text(json.dumps(dict(ground_truth="dog", images=3, datasets={"photos": {}}, size=512, notes=[], model="tiny")))
    (reports / "metrics.json").write_text(json.dumps({"images": 3, "student": {"ssim": 0.61, "f_score": 0.42}, "xdog": {"ssim": 0.55, "f_score": 0.40}}))
    folder = tmp_path / "styles" / "cat"
    result = runner.invoke(app, ["export", "-m", str(student), "--style", str(folder), "--reports", str(reports), "--licence", "CC-BY-4.0"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "example.png", "example_sketch.png", "student.json", "student.onnx", "student.safetensors", "style.json"]
    assert not [p for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".ckpt", ".bin")]
    card = (folder / "README.md").read_text()
    for needed in ("CC-BY-4.0", "Teacher model", "`tiny`", "## The example", "![example.png](example.png)", "## Training",
                   "## Distillation", "| student | **0.6100**", "## Evaluation", "SketchExtractor.load"):  # fmt: skip
        assert needed in card, needed
    with Image.open(folder / "example.png") as im:
        assert max(im.size) <= 256
    expected = as_grey(oracle(student, small["camera"]))
    for backend in ("torch", "onnx"):
        got = SketchExtractor.load(folder, "cpu", backend, precision="fp32")(small["camera"])
        assert np.abs(np.asarray(got).astype(int) - expected).max() <= 1, backend
    graph_only = tmp_path / "graph_only"
    graph_only.mkdir()
    shutil.copy(folder / "student.onnx", graph_only / "student.onnx")
    shutil.copy(folder / "student.json", graph_only / "student.json")
    loaded = SketchExtractor.load(graph_only, "cpu")
    assert loaded.backend == "onnx" and np.abs(np.asarray(loaded(small["camera"])).astype(int) - expected).max() <= 1

    # a folder that is not a style folder is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", "-m", str(student), "--style", str(other), "--no-check"])
    assert result.exit_code == 1 and "not a style folder" in result.output and (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("stored", ["upright", "exif"])
def test_the_readme_example_runs(student, tmp_path, monkeypatch, stored):
    """The Python block of the README's "Use your style", run as written in a project-like folder;
    ``exif``: cat.png stored turned 90 degrees counter-clockwise with EXIF orientation 6, as phones write it."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use your style"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[: code.index("```")]
    (tmp_path / "styles" / "cat").mkdir(parents=True)
    shutil.copy(student, tmp_path / "styles" / "cat" / "student.safetensors")
    shutil.copy(student.with_suffix(".json"), tmp_path / "styles" / "cat" / "student.json")
    (tmp_path / "data" / "example").mkdir(parents=True)
    if stored == "upright":
        shutil.copy(REPO / "data" / "example" / "cat.png", tmp_path / "data" / "example" / "cat.png")
    else:
        with Image.open(REPO / "data" / "example" / "cat.png") as im:
            exif = Image.Exif()
            exif[0x0112] = 6
            turned = np.ascontiguousarray(np.rot90(np.asarray(im.convert("RGB")), k=1))  # stored sideways
            Image.fromarray(turned).save(tmp_path / "data" / "example" / "cat.png", exif=exif.tobytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    with Image.open(REPO / "data" / "example" / "cat.png") as photo, Image.open("cat_sketch.png") as sketch:
        assert sketch.size == photo.size
    assert [s.size for s in namespace["sketches"]] == [(256, 170), (170, 256)]
    assert Path("cat_sketch.svg").read_text().count("<path") >= 1


@pytest.mark.parametrize(
    "device, bf16, runtime, graph, precision, expected",
    [
        ("cpu", True, True, True, "auto", ("torch", "bf16")),  # bf16 first where the CPU has it
        ("cpu", False, True, True, "auto", ("onnx", "fp32")),  # else ONNX Runtime, faster in fp32 (README)
        ("cpu", False, False, True, "auto", ("torch", "fp32")),  # ... when it is installed
        ("cpu", False, True, False, "auto", ("torch", "fp32")),  # ... and a graph is there
        ("cpu", True, True, True, "fp32", ("onnx", "fp32")),  # fp32 asked for on a bf16 CPU
        ("cuda", False, True, True, "auto", ("torch", "fp32")),  # a GPU: PyTorch
    ],
)
def test_auto_backend_rule(monkeypatch, tmp_path, device, bf16, runtime, graph, precision, expected):
    from diffsketch.extractor import api as extractor

    monkeypatch.setattr(extractor, "cpu_bf16_capable", lambda: bf16)
    monkeypatch.setattr(extractor, "onnxruntime_available", lambda: runtime)
    files = extractor.ModelFiles(tmp_path / "student.safetensors", tmp_path / "student.onnx" if graph else None, tmp_path)
    assert extractor.choose("auto", precision, torch.device(device), files) == expected
    only_graph = extractor.ModelFiles(None, tmp_path / "student.onnx", None)
    assert extractor.choose("auto", "auto", torch.device(device), only_graph) == ("onnx", "fp32")
