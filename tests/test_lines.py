"""Line controls (diffsketch.extractor.lines): each one's effect measured on drawn test patterns.

Oracles: stroke widths from a distance transform (scipy.ndimage.distance_transform_edt) at the
strokes' skeletons (skimage), connected components counted by scipy.ndimage.label, and colours
read back from the pixels; the patterns' widths and areas are known by construction.
"""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.extractor.api import ExtractError, render_svg, sketch_to_png, sketch_to_svg
from diffsketch.extractor.lines import LineStyle, LineStyleError, apply_lines

runner = CliRunner()


def pattern() -> np.ndarray:
    """White paper with 2-px strokes: a horizontal, a vertical and a diagonal one."""
    sketch = np.ones((96, 96), np.float32)
    sketch[20:22, 10:86] = 0.0
    sketch[30:86, 60:62] = 0.0
    for i in range(50):
        sketch[40 + i, 5 + i : 7 + i] = 0.0
    return sketch


def stroke_width(values: np.ndarray) -> float:
    """Mean stroke width in pixels: the distance to the paper at the strokes' middle lines (skeleton),
    on the ink mask upsampled 2x (so a w-pixel band is 2w wide and its middle is w from the paper)."""
    ink = np.repeat(np.repeat(values < 0.5, 2, axis=0), 2, axis=1)
    distance = ndimage.distance_transform_edt(ink)
    return float(distance[skeletonize(ink)].mean())


def test_stroke_width_grows_with_line_width():
    sketch = pattern()
    widths = {w: stroke_width(apply_lines(sketch, LineStyle(line_width=w))) for w in (0.5, 1, 2, 3, 5)}
    assert widths[1] == pytest.approx(stroke_width(sketch))  # 1 leaves the strokes as drawn
    assert 1.8 < widths[1] < 2.4  # the 2-px strokes measure 2 px
    assert widths[0.5] < widths[1] < widths[2] < widths[3] < widths[5]
    assert widths[3] - widths[1] >= 1.5  # about 2 px wider
    # fractional widths fall between the whole ones
    assert stroke_width(apply_lines(sketch, LineStyle(line_width=2.5))) <= widths[3]
    ink = apply_lines(sketch, LineStyle(line_width=3)) < 0.5
    assert ink[:35, 30].sum() == 4  # the horizontal 2-px stroke, crossed away from the others: 4 px


def test_specks_below_the_area_vanish_and_larger_ones_stay():
    sketch = np.ones((80, 80), np.float32)
    for y, x in [(5, 5), (5, 40), (30, 70), (70, 10)]:
        sketch[y : y + 2, x : x + 2] = 0.2  # 4-px specks
    sketch[40:46, 20:26] = 0.0  # a 36-px blob
    sketch[60:62, 30:70] = 0.1  # an 80-px line
    sketch[4:8, 4:8] = np.minimum(sketch[4:8, 4:8], 0.8)  # a faint rim around the first speck
    before = ndimage.label(sketch < 0.5)[1]
    cleaned = apply_lines(sketch, LineStyle(min_speck=10))
    labels, count = ndimage.label(cleaned < 0.5)
    assert (before, count) == (6, 2)
    assert sorted(np.bincount(labels.ravel())[1:]) == [36, 80]
    assert (cleaned[4:8, 4:8] == 1.0).all()  # the speck's rim went with it
    assert np.array_equal(cleaned[40:46, 20:26], sketch[40:46, 20:26])
    assert ndimage.label(apply_lines(sketch, LineStyle(min_speck=50)) < 0.5)[1] == 1
    assert np.array_equal(apply_lines(sketch, LineStyle(min_speck=0)), sketch)


def test_hysteresis_keeps_weak_lines_touching_strong_ones():
    sketch = np.ones((40, 60), np.float32)
    sketch[10, 5:20] = 0.1  # strong
    sketch[10, 20:40] = 0.5  # weak, continuing the strong line
    sketch[30, 5:40] = 0.5  # weak, alone
    out = apply_lines(sketch, LineStyle(binarize=(0.3, 0.6)))
    assert set(np.unique(out)) == {0.0, 1.0}
    assert (out[10, 5:40] == 0).all()  # the weak continuation is kept
    assert (out[30] == 1).all()  # the isolated weak line is dropped
    single_low = apply_lines(sketch, LineStyle(threshold=0.3))
    single_high = apply_lines(sketch, LineStyle(threshold=0.6))
    assert (single_low[10, 20:40] == 1).all() and (single_high[30, 5:40] == 0).all()  # one cut cannot do both
    assert apply_lines(sketch, LineStyle(binarize="0.3,0.6")).tolist() == out.tolist()


def test_colours_and_transparent_paper():
    sketch = pattern()
    red = np.asarray(sketch_to_png(sketch, style=LineStyle(line_color="red")))
    assert red.shape == (96, 96, 3)
    assert (red[sketch == 0] == [255, 0, 0]).all() and (red[sketch == 1] == 255).all()
    on_navy = np.asarray(sketch_to_png(sketch, style=LineStyle(line_color="#ffffff", background="navy")))
    assert (on_navy[sketch == 0] == 255).all() and (on_navy[sketch == 1] == [0, 0, 128]).all()
    clear = np.asarray(sketch_to_png(sketch, style=LineStyle(line_color="rgb(0, 128, 0)", background="transparent")))
    assert clear.shape == (96, 96, 4)
    assert (clear[..., 3] == np.rint(255 * (1 - sketch))).all() and (clear[..., :3] == [0, 128, 0]).all()
    assert sketch_to_png(sketch, style=LineStyle()).mode == "L"  # black on white stays grey

    svg = sketch_to_svg(sketch, style=LineStyle(line_color="#ff0000", background="#00ff00"))
    assert 'fill="#ff0000"' in svg and 'fill="#00ff00"' in svg and 'fill="#000000"' not in svg
    grey = render_svg(svg)
    assert grey[sketch == 1].mean() == pytest.approx(np.dot([0, 255, 0], [0.299, 0.587, 0.114]) / 255, abs=0.01)


def test_bad_controls_name_the_option():
    with pytest.raises(LineStyleError, match="--line-width"):
        LineStyle(line_width=0)
    with pytest.raises(LineStyleError, match="--binarize"):
        LineStyle(binarize=(0.7, 0.2))
    with pytest.raises(LineStyleError, match="--line-color 'sky'"):
        LineStyle(line_color="sky")
    with pytest.raises(LineStyleError, match="--min-speck"):
        LineStyle(min_speck=-1)
    with pytest.raises(LineStyleError, match="give one of them"):
        LineStyle(threshold=0.5, binarize=(0.2, 0.4))


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from diffsketch.evaluation.data import PHOTOS

    path = tmp_path_factory.mktemp("photo") / "coins.png"
    with Image.open(PHOTOS["coins"].source_path()) as im:
        im.convert("RGB").resize((192, 144)).save(path)
    return path


@pytest.mark.usefixtures("one_thread")
def test_cli_line_controls_change_the_output_as_documented(student, photo, tmp_path):
    from diffsketch import SketchExtractor

    def extract(name, *options):
        result = runner.invoke(app, ["extract", str(photo), "-o", str(tmp_path / name), "-m", str(student), "--no-progress", *options])
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / name / "coins.png") as im:
            return im.mode, np.asarray(im)

    extractor = SketchExtractor.load(student, "cpu")
    base = extractor.arrays([photo])[0]
    grey = np.asarray(extractor(photo))
    level = float(np.quantile(base, 0.3))  # a cut with a fair amount of ink in this random student's output
    cut = ["--binarize", f"{level},{level}"]
    _, one = extract("w1", *cut)
    _, three = extract("w3", *cut, "--line-width", "3")
    assert stroke_width(three / 255) > stroke_width(one / 255) + 1

    mode, binary = extract("bin", "--binarize", f"{level / 2},{level}")
    assert mode == "L" and set(np.unique(binary)) <= {0, 255}
    strong, weak = base < level / 2, base < level
    connected = ndimage.binary_propagation(strong, mask=weak)  # through pixels sharing a side
    assert ((binary == 0) != connected).mean() < 0.001  # (a pixel at a threshold may round either way)
    assert (weak & ~connected).sum() > 20 and (binary[weak & ~connected] == 255).mean() > 0.95  # isolated weak ink dropped

    _, specks = extract("speck", *cut, "--min-speck", "30")
    sizes = np.bincount(ndimage.label(one == 0, structure=np.ones((3, 3)))[0].ravel())[1:]
    after = np.bincount(ndimage.label(specks == 0, structure=np.ones((3, 3)))[0].ravel())[1:]
    assert (sizes < 30).any() and not (after < 30).any() and sorted(after) == sorted(sizes[sizes >= 30])

    mode, red = extract("red", "--line-color", "#ff0000")
    assert mode == "RGB" and (red[..., 0] == 255).all() and np.array_equal(red[..., 1], grey)
    mode, clear = extract("clear", "--background", "transparent")
    assert mode == "RGBA" and np.array_equal(clear[..., 3], 255 - grey)

    bad = runner.invoke(app, ["extract", str(photo), "-o", str(tmp_path / "x"), "-m", str(student), "--line-color", "sky"])
    assert bad.exit_code != 0 and "not a colour" in bad.output and "Traceback" not in bad.output
    with pytest.raises(ExtractError, match="contradict"):
        extractor(photo, transparent=True, background="red")
