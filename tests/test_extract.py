"""`diffsketch extract`: a tiny random student on real photos (skimage) saved as files of many kinds."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.extractor.batch import ExtractError, cap_size, collect_jobs, run_extract
from diffsketch.student.network import Student, load_student
from diffsketch.core.images import read_rgb

runner = CliRunner()
SUMMARY = "{} written, {} skipped (exists), {} failed"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """astronaut (512x512 PNG), chelsea (451x300 JPEG, non-square) and coffee (600x400 PNG)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name, array, ext in [("astronaut", data.astronaut(), "png"), ("chelsea", data.chelsea(), "jpg"), ("coffee", data.coffee(), "png")]:
        paths[name] = folder / f"{name}.{ext}"
        Image.fromarray(array).save(paths[name])
    return paths


def extract(*args):
    return runner.invoke(app, ["extract", *map(str, args), "--no-progress", "--precision", "fp32"])


def reference(student, path):
    """The sketch the student gives for an image file, as 0-255 values."""
    model, _ = load_student(student)
    with torch.inference_mode():
        sketch = model(read_rgb(path)[None])[0, 0].numpy()
    return np.rint(sketch * 255.0)


def pixels(path):
    with Image.open(path) as im:
        return im.mode, im.size, np.asarray(im).astype(np.int64)


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_one_sketch_per_input_at_its_size(student, photos, tmp_path):
    out = tmp_path / "out"
    result = extract(*photos.values(), "--out", out, "--model", student)
    assert result.exit_code == 0, result.output
    assert SUMMARY.format(3, 0, 0) in result.output
    assert files(out) == ["astronaut.png", "chelsea.png", "coffee.png"]
    for name, path in photos.items():
        mode, size, values = pixels(out / f"{name}.png")
        with Image.open(path) as im:
            assert size == im.size  # (451, 300) for chelsea: not cropped, not transposed
        assert mode == "L"
        assert np.abs(values - reference(student, path)).max() <= 1
        assert values.std() > 0


def test_folders_recursion_globs_and_sub_paths(student, photos, tmp_path):
    src = tmp_path / "in"
    (src / "sub" / "deep").mkdir(parents=True)
    shutil.copy(photos["astronaut"], src / "a.PNG")  # extensions are case-insensitive
    shutil.copy(photos["chelsea"], src / "sub" / "b.jpg")
    shutil.copy(photos["coffee"], src / "sub" / "deep" / "c.png")
    shutil.copy(photos["coffee"], src / "sub" / "a.png")  # same stem as the top-level a.PNG, other folder
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"not scanned")

    result = extract(src, "-o", tmp_path / "top", "-m", student)
    assert result.exit_code == 0, result.output
    assert files(tmp_path / "top") == ["a.png"]

    result = extract(src, "--recursive", "-o", tmp_path / "all", "-m", student)
    assert result.exit_code == 0, result.output
    assert files(tmp_path / "all") == ["a.png", "sub/a.png", "sub/b.png", "sub/deep/c.png"]
    assert pixels(tmp_path / "all" / "sub" / "b.png")[1] == (451, 300)

    result = extract(f"{src}/**/*.png", "-o", tmp_path / "glob", "-m", student)
    assert result.exit_code == 0, result.output
    assert files(tmp_path / "glob") == ["sub/a.png", "sub/deep/c.png"]  # sub-paths below the pattern's fixed part

    result = extract(f"{src}/*.gif", "-o", tmp_path / "none", "-m", student)
    assert result.exit_code == 1 and "no file matches" in result.output

    # an output folder inside the input folder is not read back as input on the next run
    inner = src / "sketches"
    assert extract(src, "-r", "-o", inner, "-m", student).exit_code == 0
    result = extract(src, "-r", "-o", inner, "-m", student)
    assert result.exit_code == 0 and SUMMARY.format(0, 4, 0) in result.output


def test_colliding_outputs_fail_instead_of_overwriting(student, photos, tmp_path):
    shutil.copy(photos["coffee"], tmp_path / "astronaut.bmp")
    out = tmp_path / "out"
    result = extract(photos["astronaut"], tmp_path / "astronaut.bmp", "-o", out, "-m", student)
    assert result.exit_code == 1
    assert SUMMARY.format(1, 0, 1) in result.output and "would overwrite the sketch of" in result.output
    assert np.abs(pixels(out / "astronaut.png")[2] - reference(student, photos["astronaut"])).max() <= 1
    # the same file reached twice (named, and through its folder) is done once, without a failure
    jobs, failures = collect_jobs([str(photos["coffee"]), str(photos["coffee"].parent)], out)
    assert not failures and len(jobs) == 3


def test_every_image_mode_and_exif_rotation(student, photos, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with Image.open(photos["chelsea"]) as im:
        rgb = im.convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(src / "rgba.png")
    rgb.convert("LA").save(src / "la.png")
    grey = rgb.convert("L")
    grey.save(src / "grey.png")
    rgb.convert("P").save(src / "palette.png")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(src / "deep16.png")  # 16-bit, same levels as grey
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 451x300, displayed rotated 90 degrees clockwise: 300x451
    rgb.save(src / "rotated.jpg", exif=exif.tobytes())
    with Image.open(src / "deep16.png") as im:
        assert im.mode.startswith("I")
    with Image.open(src / "rotated.jpg") as im:
        ImageOps.exif_transpose(im).save(src / "upright.png")

    out = tmp_path / "out"
    result = extract(src, "-o", out, "-m", student)
    assert result.exit_code == 0, result.output
    assert SUMMARY.format(7, 0, 0) in result.output
    for name in ("rgba", "la", "grey", "palette", "deep16"):
        mode, size, _ = pixels(out / f"{name}.png")
        assert (mode, size) == ("L", (451, 300)), name
    assert pixels(out / "rotated.png")[1] == (300, 451)
    assert np.array_equal(pixels(out / "rotated.png")[2], pixels(out / "upright.png")[2])
    assert np.array_equal(pixels(out / "deep16.png")[2], pixels(out / "grey.png")[2])  # 16-bit scaled like 8-bit


def test_bad_inputs_are_reported_and_skipped(student, photos, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "corrupt.png").write_bytes(b"\x00garbage, not a PNG" * 50)
    data = photos["coffee"].read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "tiny.png").write_bytes(b"")
    Image.new("RGB", (4, 30), "white").save(src / "narrow.png")  # too small for 2 downsamples
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"

    result = extract(photos["astronaut"], src, missing, photos["chelsea"], "-o", out, "-m", student)
    assert result.exit_code == 1
    assert SUMMARY.format(2, 0, 5) in result.output
    for name in ("corrupt.png", "truncated.png", "tiny.png", "narrow.png", "missing.jpg"):
        assert name in result.output
    assert "does not exist" in result.output and "at least 5 px" in result.output
    assert "Traceback" not in result.output
    assert files(out) == ["astronaut.png", "chelsea.png"]  # the others went on; nothing half-written

    report = run_extract([src / "truncated.png", photos["coffee"]], tmp_path / "lib", student, progress=False)
    assert report.written == [tmp_path / "lib" / "coffee.png"] and not report.skipped
    assert [f.source for f in report.failed] == [str(src / "truncated.png")] and not report.ok


def test_a_failed_write_leaves_no_partial_file(student, photos, tmp_path, monkeypatch):
    real_save = Image.Image.save

    def save_then_crash(self, fp, *args, **kwargs):
        if "astronaut" in str(fp):
            real_save(self, fp, *args, **kwargs)
            fp.write_bytes(fp.read_bytes()[:100])
            raise OSError("No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_crash)
    out = tmp_path / "out"
    result = extract(photos["astronaut"], photos["coffee"], "-o", out, "-m", student)
    assert result.exit_code == 1 and "No space left" in result.output
    assert files(out) == ["coffee.png"]  # no astronaut.png, no temporary file


def test_existing_outputs_are_kept_unless_overwrite(student, photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "coffee.png").write_bytes(b"mine")
    result = extract(photos["coffee"], photos["astronaut"], "-o", out, "-m", student)
    assert result.exit_code == 0, result.output
    assert SUMMARY.format(1, 1, 0) in result.output and "--overwrite" in result.output
    assert (out / "coffee.png").read_bytes() == b"mine"
    result = extract(photos["coffee"], "-o", out, "-m", student, "--overwrite")
    assert result.exit_code == 0 and SUMMARY.format(1, 0, 0) in result.output
    assert pixels(out / "coffee.png")[1] == (600, 400)


def test_transparent_and_threshold(student, photos, tmp_path):
    image = photos["astronaut"]
    assert extract(image, "-o", tmp_path / "grey", "-m", student).exit_code == 0
    grey = pixels(tmp_path / "grey" / "astronaut.png")[2]

    assert extract(image, "-o", tmp_path / "rgba", "-m", student, "--transparent").exit_code == 0
    mode, _, rgba = pixels(tmp_path / "rgba" / "astronaut.png")
    assert mode == "RGBA"
    assert (rgba[..., :3] == 0).all()  # black ink
    assert np.array_equal(rgba[..., 3], 255 - grey)  # alpha = 1 - sketch: paper transparent

    t = float(np.median(grey)) / 255.0  # a threshold that splits the image
    assert extract(image, "-o", tmp_path / "bin", "-m", student, "--threshold", t).exit_code == 0
    mode, _, binary = pixels(tmp_path / "bin" / "astronaut.png")
    assert mode == "L" and set(np.unique(binary)) == {0, 255}
    assert (binary == np.where(grey / 255.0 < t, 0, 255)).mean() > 0.98

    assert extract(image, "-o", tmp_path / "both", "-m", student, "--threshold", t, "--transparent").exit_code == 0
    alpha = pixels(tmp_path / "both" / "astronaut.png")[2][..., 3]
    assert np.array_equal(alpha, 255 - binary)

    assert extract(image, "-o", tmp_path / "x", "-m", student, "--threshold", "1.5").exit_code != 0
    with pytest.raises(ExtractError, match="threshold"):
        run_extract([image], tmp_path / "x", student, threshold=-0.1)


def test_size_caps_the_long_side(student, photos, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((60, 90, 3), 128, np.uint8)).save(small)
    out = tmp_path / "out"
    result = extract(photos["chelsea"], photos["astronaut"], small, "-o", out, "-m", student, "--size", 200)
    assert result.exit_code == 0, result.output
    width, height = pixels(out / "chelsea.png")[1]
    assert width == 200 and abs(height - 300 * 200 / 451) <= 1
    assert pixels(out / "astronaut.png")[1] == (200, 200)
    assert pixels(out / "small.png")[1] == (90, 60)  # never upscaled
    assert cap_size(300, 451, 200) == (133, 200) and cap_size(451, 300, None) == (451, 300)


def test_model_errors_stop_before_any_output(student, photos, tmp_path):
    out = tmp_path / "out"
    result = extract(photos["coffee"], "-o", out, "-m", tmp_path / "nothing.safetensors")
    assert result.exit_code == 1
    assert "nothing.safetensors" in result.output and "dvc repro distill" in result.output
    assert not out.exists()

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    shutil.copy(student.with_suffix(".json"), bad.with_suffix(".json"))
    result = extract(photos["coffee"], "-o", out, "-m", bad)
    assert result.exit_code == 1 and "bad.safetensors" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_batches_give_the_same_sketches(student, photos, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i, path in enumerate([photos["astronaut"], photos["coffee"], photos["chelsea"]]):
        with Image.open(path) as im:
            im.convert("RGB").crop((0, 0, 96, 72)).save(src / f"{i}.png")
    Image.new("RGB", (50, 40), "red").save(src / "3.png")  # another size: its own batch

    batches = []
    forward = Student.forward
    monkeypatch.setattr(Student, "forward", lambda self, x: batches.append(x.shape[0]) or forward(self, x))
    outputs = {}
    for batch_size, expected in [(8, [3, 1]), (2, [2, 1, 1]), (1, [1, 1, 1, 1])]:
        batches.clear()
        out = tmp_path / f"b{batch_size}"
        result = extract(src, "-o", out, "-m", student, "--batch-size", batch_size)
        assert result.exit_code == 0, result.output
        assert batches == expected
        outputs[batch_size] = [pixels(out / f"{i}.png")[2] for i in range(4)]
    for batch_size in (8, 2):
        for batched, single in zip(outputs[batch_size], outputs[1]):
            assert np.abs(batched - single).max() <= 1
    assert np.abs(outputs[1][0] - outputs[1][1]).max() > 10  # different images give different sketches


def test_cuda_without_a_gpu_is_a_clear_error(student, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = extract(photos["coffee"], "-o", tmp_path / "out", "-m", student, "--device", "cuda")
    assert result.exit_code == 1 and "no CUDA GPU" in result.output and "--device cpu" in result.output
    result = extract(photos["coffee"], "-o", tmp_path / "out", "-m", student, "--device", "tpu")
    assert result.exit_code == 1 and "auto, cpu, cuda" in result.output
    assert not (tmp_path / "out").exists()
    result = extract(photos["coffee"], "-o", tmp_path / "out", "-m", student, "--device", "auto")
    assert result.exit_code == 0 and (tmp_path / "out" / "coffee.png").is_file()


def test_help_documents_size():
    result = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--size" in result.output and "downscaled" in result.output


def test_empty_svgs_are_counted_and_named(student, photos, tmp_path, monkeypatch, caplog):
    """An all-white sketch traces to an SVG with no path: it is written, counted in the summary and
    named in a warning; sketches with lines are not."""
    import logging

    from diffsketch.extractor.api import SketchExtractor

    real = SketchExtractor.sketch_tensors

    def white_for_coffee(self, images):  # coffee (600 x 400) gets an all-white sketch, the others their own
        return [np.ones(image.shape[-2:], np.float32) if tuple(image.shape[-2:]) == (400, 600) else sketch
                for image, sketch in zip(images, real(self, images))]  # fmt: skip

    monkeypatch.setattr(SketchExtractor, "sketch_tensors", white_for_coffee)
    out = tmp_path / "svg"
    with caplog.at_level(logging.WARNING, logger="diffsketch.extractor.batch"):
        report = run_extract(list(photos.values()), out, student, format="svg", progress=False)
    assert "<path" not in (out / "coffee.svg").read_text()
    assert all("<path" in (out / f"{name}.svg").read_text() for name in ("astronaut", "chelsea"))
    assert report.empty == [out / "coffee.svg"] and len(report.written) == 3
    assert report.summary().startswith(SUMMARY.format(3, 0, 0) + "; 1 SVG has no lines")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(out / "coffee.svg") in warnings[0] and "astronaut" not in warnings[0]

    monkeypatch.setattr(SketchExtractor, "sketch_tensors", real)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffsketch.extractor.batch"):  # threshold 0: no value is below it
        report = run_extract([photos["astronaut"], photos["chelsea"]], tmp_path / "t0", student, format="svg", threshold=0.0, progress=False)
    assert sorted(p.name for p in report.empty) == ["astronaut.svg", "chelsea.svg"]
    assert report.summary() == SUMMARY.format(2, 0, 0) + "; 2 SVGs have no lines (nothing darker than the threshold: a blank sketch, or raise --threshold)"
    assert "astronaut.svg" in caplog.text and "chelsea.svg" in caplog.text

    report = run_extract([photos["astronaut"]], tmp_path / "png", student, threshold=0.0, progress=False)
    assert report.empty == [] and report.summary() == SUMMARY.format(1, 0, 0)  # PNGs are not traced
