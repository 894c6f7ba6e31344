"""Native resolution by tiles (diffsketch.extractor.tiles) and the one size policy (megapixel cap, bounded memory).

Oracles: the student's own ``Student.forward`` on the whole image (instance norms over the whole
image), the photo's pixel count from its header, and the peak resident memory the kernel reports
for a separate process (``VmHWM`` in ``/proc/self/status``: the high-water mark of the process's
own memory map since its ``exec``; ``ru_maxrss`` would not do, since Linux carries the parent's peak
over into a child that ``subprocess`` starts, so under a pytest process of 2.6 GB every child
"peaked" at 2.6 GB).
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.evaluation.data import PHOTOS
from diffsketch.student.network import Student, StudentConfig, save_student

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def deep_student(tmp_path_factory):
    """A random student with 3 downsamplings and 2 residual blocks (11 instance norms), width 8."""
    torch.manual_seed(1)
    model = Student(StudentConfig(width=8, downsamples=3, blocks=2)).eval()
    return model, save_student(model, tmp_path_factory.mktemp("deep") / "s.safetensors")


@pytest.fixture(scope="module")
def narrow_student(tmp_path_factory):
    """A random student of width 2 (2 downsamplings, 1 block): cheap on photos of many megapixels."""
    torch.manual_seed(2)
    return save_student(Student(StudentConfig(width=2, downsamples=2, blocks=1)), tmp_path_factory.mktemp("narrow") / "s.safetensors")


@pytest.fixture(scope="module")
def photo_1024(tmp_path_factory):
    """A packaged photo at 1024 x 768 (PNG)."""
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    with Image.open(PHOTOS["coffee"].source_path()) as im:
        im.convert("RGB").resize((1024, 768), Image.Resampling.BICUBIC).save(path)
    return path


def whole_of(model, image: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model((image.float() / 255.0)[None])[0, 0].numpy()


def _whole(model, path) -> np.ndarray:
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    with torch.inference_mode():
        return model(image[None])[0, 0].numpy()


def test_tiles_equal_the_whole_image_pass(deep_student, photo_1024):
    from diffsketch.extractor import SketchExtractor, TiledStudent

    model, path = deep_student
    whole = _whole(model, photo_1024)
    extractor = SketchExtractor.load(path, "cpu", "torch", precision="fp32", tile=256)
    tiled = extractor.arrays([photo_1024])[0]  # 4 x 3 tiles of 256 px
    assert tiled.shape == (768, 1024)
    assert np.abs(tiled - whole).mean() < 1 / 255
    assert np.abs(tiled - whole).max() < 1e-4  # equal up to float rounding
    assert np.array_equal(extractor.arrays([photo_1024], tile=0)[0].shape, whole.shape)

    # without kept activations (every pass from the photo) the result is the same
    recomputed = TiledStudent.build(model, keep_bytes=0)
    image = torch.from_numpy(np.asarray(Image.open(photo_1024).convert("RGB"))[:200, :304].transpose(2, 0, 1).copy())
    assert np.abs(recomputed(image, 64) - whole_of(model, image)).max() < 1e-4

    # the naive tiling (each tile normalised by its own statistics) is what this avoids
    pixels = torch.from_numpy(np.asarray(Image.open(photo_1024).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    naive = np.zeros_like(whole)
    with torch.inference_mode():
        for y in range(0, 768, 256):
            for x in range(0, 1024, 256):
                naive[y : y + 256, x : x + 256] = model(pixels[None, :, y : y + 256, x : x + 256])[0, 0].numpy()
    assert np.abs(naive - whole).mean() > 2 / 255


def test_native_size_on_the_command_line(narrow_student, tmp_path):
    photo = tmp_path / "photo.png"
    with Image.open(PHOTOS["astronaut"].source_path()) as im:
        im.convert("RGB").resize((3000, 2000), Image.Resampling.BILINEAR).save(photo)
    out = tmp_path / "out"
    result = runner.invoke(app, ["extract", str(photo), "-o", str(out), "-m", str(narrow_student), "--size", "native", "--no-progress"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "photo.png") as sketch:
        assert sketch.size == (3000, 2000)
    bad = runner.invoke(app, ["extract", str(photo), "-o", str(out), "-m", str(narrow_student), "--size", "huge"])
    assert bad.exit_code != 0 and "positive number of pixels, or native" in bad.output


def test_the_megapixel_cap_refuses_from_the_header(student, tmp_path, monkeypatch):
    from diffsketch import SketchExtractor
    from diffsketch.core import images
    from diffsketch.extractor import TooLargeError

    big = tmp_path / "big.png"
    Image.new("1", (8000, 6000), 1).save(big)  # 48 megapixels in a few kB
    decoded = []
    monkeypatch.setattr(images, "_pixels", lambda im: decoded.append(im))
    monkeypatch.setattr(images, "read_rgb_bounded", lambda *a, **k: decoded.append(a))
    result = runner.invoke(app, ["extract", str(big), "-o", str(tmp_path / "out"), "-m", str(student), "--no-progress"])
    assert result.exit_code == 1
    assert "8000x6000 px (48.0 megapixels), over the cap of 40 megapixels" in result.output
    assert "--max-megapixels" in result.output and not decoded
    extractor = SketchExtractor.load(student, "cpu")
    with pytest.raises(TooLargeError, match="--max-megapixels"):
        extractor(big)
    with pytest.raises(TooLargeError, match="over the cap of 1 megapixels"):
        SketchExtractor.load(student, "cpu", max_megapixels=1)(np.zeros((1000, 1001), np.uint8))


def test_reduced_decoding_keeps_the_size_and_the_picture(student, tmp_path):
    """A JPEG decoded at 1/4 by its DCT scaling, then resized, gives the size and (nearly) the pixels of the full decode."""
    from diffsketch.core.images import read_rgb
    from diffsketch.extractor.api import resize_capped
    from diffsketch.extractor.batch import prepare_image

    path = tmp_path / "p.jpg"
    with Image.open(PHOTOS["chelsea"].source_path()) as im:
        im.convert("RGB").resize((1804, 1200), Image.Resampling.BICUBIC).save(path, quality=95)
    full = resize_capped(read_rgb(path), 300)  # the full decode, resized by the same filter
    reduced = prepare_image(path, 300, 9, bounded=True)
    assert reduced.shape == full.shape == (3, 200, 300)
    assert (reduced - full).abs().mean() < 0.01
    native = prepare_image(path, None, 9, bounded=True)
    assert native.dtype == torch.uint8 and native.shape == (3, 1200, 1804)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(6000, 4000), (8000, 6000)], ids=["24MP", "48MP"])
def test_a_big_photo_stays_under_2_gb(narrow_student, tmp_path, size):
    """``diffsketch extract`` of a JPEG at its own size, in a child process that reports its peak RSS: 6000 x 4000,
    and 8000 x 6000 with the megapixel cap raised to 50 (the default cap of 40 refuses it: the cap test)."""
    photo = tmp_path / "big.jpg"
    with Image.open(PHOTOS["coffee"].source_path()) as im:
        im.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(photo, quality=90)
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from diffsketch.cli.main import app
        result = CliRunner().invoke(app, ["extract", {str(photo)!r}, "-o", {str(tmp_path / "out")!r}, "-m", {str(narrow_student)!r},
                                          "--no-progress", "--max-megapixels", "50"])
        print(result.output)
        print("peak", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # KiB
        sys.exit(result.exit_code)
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    peak_gb = int(done.stdout.split("peak")[-1]) / 2**20
    assert 0.1 < peak_gb < 2.0, done.stdout
    with Image.open(tmp_path / "out" / "big.png") as sketch:
        assert sketch.size == size
