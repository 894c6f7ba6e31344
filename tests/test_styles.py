"""Built-in sketch styles, the HED / Informative Drawings networks, and loading the user's files."""

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffsketch.core.images import ImageError, check_image_file, load_image, load_sketch, save_image, save_sketch, square_box

from diffsketch.training.styles import HED, STYLES, InformativeDrawings, StyleError, apply_style, canny, dog, xdog


def white_square_on_black(size=64, lo=16, hi=48):
    image = torch.zeros(3, size, size)
    image[:, lo:hi, lo:hi] = 1.0
    return image


# ------------------------------------------------------------------ built-in styles


def _blur(grey, sigma):
    """An explicit separable Gaussian blur like OpenCV's on uint8: kernel radius round(3 sigma),
    reflect-101 border (numpy's 'reflect'), result rounded to whole grey levels."""
    radius = int(round(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()

    def along_rows(a):
        return np.stack([np.convolve(np.pad(row, radius, mode="reflect"), kernel, mode="valid") for row in a])

    return np.rint(along_rows(along_rows(grey).T).T)


def test_xdog_square():
    image = white_square_on_black()
    out = xdog(image)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.all(out[0, 16:48, 16:48] == 1.0), "the bright square is paper, right up to its edge"
    black = 1 + math.tanh(10 * (0 - 0.1))  # on black D <= 0: at most 1 + tanh(-phi eps)
    assert out[0, :15].max() < black and out[0, :, :15].max() < black
    assert torch.equal(apply_style("xdog", image), out)
    # The other way round (a dark shape on white paper): paper stays white, ink starts at the edge.
    out = xdog(1 - image)[0]
    assert torch.all(out[:16] == 1.0) and torch.all(out[:, 48:] == 1.0)
    assert out[16:48, 16:48].max() < 0.01


def test_xdog_by_hand():
    """The whole output recomputed independently: explicit kernels, the authors' grey and formula.

    The picture is wide enough (720 px) that cutting the sigma-100 kernel at 3 sigma (as OpenCV does
    for 8-bit images) rather than 4 changes some blurred values.
    """
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (3, 6, 720))
    levels[:, :, 360:] //= 8  # a dark right half
    image = torch.from_numpy(levels / 255.0).float()
    grey = np.floor(levels.mean(axis=0))  # mean of the 8-bit channels, cast to uint8 (truncation)
    d = (_blur(grey, 0.5) - 0.98 * _blur(grey, 100.0)) / 255
    expected = np.where(d >= 0.1, 1.0, 1 + np.tanh(10 * (d - 0.1)))
    assert np.abs(xdog(image)[0].numpy() - expected).max() < 1e-5


@pytest.mark.parametrize("level", [1.0, 0.5, 0.0])
def test_xdog_flat_image_is_uniform(level):
    """With gamma = 0.98 a flat area has D = 0.02 v/255 < epsilon: a uniform grey, not white."""
    out = xdog(torch.full((3, 16, 16), level))
    v = round(level * 255)
    expected = 1 + math.tanh(10 * ((v - 0.98 * v) / 255 - 0.1))
    assert torch.allclose(out, torch.full_like(out, expected), atol=1e-6)


@pytest.mark.parametrize("style", [canny, dog])
def test_edge_styles_draw_the_square_outline(style):
    out = style(white_square_on_black())
    assert out.shape == (1, 64, 64) and out.min() >= 0 and out.max() <= 1
    for far in (out[0, 26:38, 26:38], out[0, 0:6, 0:6], out[0, 58:, 58:]):
        assert far.min() > 0.99, "white paper away from the edges"
    for side in (out[0, 30:34, 13:19], out[0, 30:34, 45:51], out[0, 13:19, 30:34], out[0, 45:51, 30:34]):
        assert side.min() < 0.3, "a dark line along each side"


def test_canny_is_black_on_white():
    out = canny(white_square_on_black())
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out == 0).float().mean() < 0.1


def test_unknown_style():
    with pytest.raises(StyleError, match="unknown sketch style 'pencil'.*xdog"):
        apply_style("pencil", white_square_on_black())
    assert STYLES == ("xdog", "canny", "dog", "hed", "anime")


# ------------------------------------------------------------------ network styles


def _random_state(module_cls, seed=0):
    torch.manual_seed(seed)
    return module_cls().state_dict()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    hed = _random_state(HED)
    torch.save(hed, d / "hed.pth")
    # pytorch-hed's file uses the older "module..." naming.
    torch.save({k.replace("net", "module", 1): v for k, v in hed.items()}, d / "network-bsds500.pytorch")
    torch.save(_random_state(InformativeDrawings), d / "netG_A_latest.pth")
    return d


def test_informative_drawings_key_layout():
    keys = set(InformativeDrawings().state_dict())
    assert "model0.1.weight" in keys and "model4.1.bias" in keys
    assert "model2.2.conv_block.5.weight" in keys and "model3.3.weight" in keys
    assert all(k.split(".")[0] in {f"model{i}" for i in range(5)} for k in keys)
    assert not any("running" in k for k in keys), "instance norm has no saved statistics"


def test_hed_key_layout():
    keys = set(HED().state_dict())
    assert {"netVggOne.0.weight", "netVggTwo.1.weight", "netVggFiv.5.weight", "netScoreFou.bias", "netCombine.0.weight"} <= keys


@pytest.mark.parametrize("name", ["hed", "anime"])
def test_network_styles_need_weights(name, tmp_path):
    image = white_square_on_black(32)
    with pytest.raises(StyleError, match=r"example\.style_weights") as err:
        apply_style(name, image)
    assert ("network-bsds500.pytorch" if name == "hed" else "anime_style/netG_A_latest.pth") in str(err.value)
    missing = tmp_path / "nope.pth"
    with pytest.raises(StyleError, match="does not exist"):
        apply_style(name, image, str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(StyleError, match=f"{garbage}.*could not be read"):
        apply_style(name, image, str(garbage))


@pytest.mark.parametrize("name, filename", [("hed", "hed.pth"), ("hed", "network-bsds500.pytorch"), ("anime", "netG_A_latest.pth")])
def test_network_styles_run_with_weights(name, filename, weights_dir):
    image = torch.rand(3, 32, 48)
    out = apply_style(name, image, str(weights_dir / filename))
    assert out.shape == (1, 32, 48) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert out.std() > 0


def test_hed_is_one_minus_the_fused_side_outputs(weights_dir):
    net = HED()
    net.load_state_dict(torch.load(weights_dir / "hed.pth"))
    image = torch.rand(3, 32, 32)
    expected = 1 - net.eval()(image[None])[0]
    assert torch.allclose(apply_style("hed", image, str(weights_dir / "hed.pth")), expected, atol=1e-5)
    # DiffSketch's combination uses side outputs [1, 2, 3, 2, 1]: stages 4 and 5 do not matter.
    with torch.no_grad():
        net.netScoreFou.weight.fill_(100.0)
        net.netScoreFiv.bias.fill_(-100.0)
    assert torch.allclose(1 - net(image[None])[0], expected, atol=1e-5)


@pytest.mark.parametrize("name, module_cls", [("hed", HED), ("anime", InformativeDrawings)])
def test_network_styles_reject_mismatched_keys(name, module_cls, tmp_path):
    state = _random_state(module_cls)
    first = next(iter(state))
    state["renamed." + first] = state.pop(first)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(StyleError, match=r"does not fit.*renamed.*example\.style_weights"):
        apply_style(name, torch.rand(3, 32, 32), str(path))


# ------------------------------------------------------------------ loading files


def drawing(width=40, height=40):
    """A white page with a black vertical bar in the middle third (uint8)."""
    arr = np.full((height, width), 255, np.uint8)
    arr[height // 4 : 3 * height // 4, width // 2 - 2 : width // 2 + 2] = 0
    return arr


def opened(path):
    """The decoded image at ``path``, with the file closed."""
    with Image.open(path) as im:
        im.load()
        return im


def write(im, path):
    im.save(path)
    return path


def _as_rgba(arr):
    rgba = np.zeros(arr.shape + (4,), np.uint8)  # transparent black paper
    rgba[..., 3] = 255 - arr  # opaque black ink
    return Image.fromarray(rgba)


def _as_la(arr):
    black = Image.fromarray(np.zeros_like(arr))  # transparent black paper, opaque black ink
    return Image.merge("LA", [black, Image.fromarray(255 - arr)])


MODES = {
    "L": lambda a: Image.fromarray(a),
    "1": lambda a: Image.fromarray(a).convert("1"),
    "RGB": lambda a: Image.fromarray(np.stack([a] * 3, axis=-1)),
    "P": lambda a: Image.fromarray(np.stack([a] * 3, axis=-1)).convert("P"),
    "RGBA": _as_rgba,
    "LA": _as_la,
    "I;16": lambda a: Image.fromarray((a.astype(np.uint16) * 257)),  # 255 -> 65535
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_load_sketch_modes(mode, tmp_path):
    im = MODES[mode](drawing())
    path = write(im, tmp_path / "sketch.png")
    assert opened(path).mode == mode
    sketch = load_sketch(path, 40)
    assert sketch.shape == (1, 40, 40) and sketch.dtype == torch.float32
    assert sketch[0, 2, 2].item() == pytest.approx(1.0, abs=1e-4), "paper is white (transparency on white)"
    assert sketch[0, 20, 20].item() == pytest.approx(0.0, abs=1e-4), "ink is black"
    photo = load_image(path, 40)
    assert photo.shape == (3, 40, 40)
    assert photo[:, 2, 2].tolist() == pytest.approx([1.0] * 3, abs=1e-4)
    assert photo[:, 20, 20].tolist() == pytest.approx([0.0] * 3, abs=1e-4)


def test_load_sketch_16bit_range(tmp_path):
    arr = np.zeros((16, 16), np.uint16)
    arr[:, 8:] = 65535
    arr[:4, :4] = 32768  # mid grey: 16-bit values are scaled by 65535, not clipped at 255
    path = write(Image.fromarray(arr), tmp_path / "deep.png")
    assert opened(path).mode in ("I;16", "I")
    sketch = load_sketch(path, 16)
    assert sketch[0, 8, 12].item() == 1.0 and sketch[0, 8, 3].item() == 0.0
    assert sketch[0, 1, 1].item() == pytest.approx(32768 / 65535, abs=1e-3)


def test_load_rgba_photo_composites_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    rgba[:, 4:6, 3] = 128  # half-transparent red -> pink
    path = write(Image.fromarray(rgba), tmp_path / "photo.png")
    photo = load_image(path, 8)
    assert photo[:, 3, 1].tolist() == pytest.approx([1, 0, 0], abs=1e-3)
    assert photo[:, 3, 7].tolist() == pytest.approx([1, 1, 1], abs=1e-3)
    assert photo[1, 3, 4].item() == pytest.approx(1 - 128 / 255, abs=0.02)


def test_load_image_other_modes(tmp_path):
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[..., 2] = 200
    cmyk = write(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg")
    assert load_image(cmyk, 12)[:, 6, 6].tolist() == pytest.approx([0, 0, 200 / 255], abs=0.05)
    grey_float = Image.fromarray(np.full((12, 12), 0.25, np.float32))
    assert grey_float.mode == "F"
    f = write(grey_float, tmp_path / "float.tif")
    assert load_sketch(f, 12)[0, 6, 6].item() == pytest.approx(0.25, abs=1e-4)


def test_load_sketch_wrong_aspect(tmp_path):
    path = write(Image.fromarray(drawing(60, 40)), tmp_path / "wide.png")
    with pytest.raises(ImageError, match=r"wide\.png is 60x40 .*square"):
        load_sketch(path, 32)
    with pytest.raises(ImageError) as err:
        load_sketch(path, 32, source_shape=(30, 60))
    assert "60x40" in str(err.value) and "60x30" in str(err.value)
    assert load_sketch(path, 32, source_shape=(80, 120)).shape == (1, 32, 32)


def test_load_sketch_resizes_same_aspect(tmp_path):
    path = write(Image.fromarray(drawing(201, 200)), tmp_path / "big.png")  # 0.5% off square: accepted
    sketch = load_sketch(path, 32)
    off = write(Image.fromarray(drawing(103, 100)), tmp_path / "off.png")  # 3% off: refused
    with pytest.raises(ImageError, match="103x100"):
        load_sketch(off, 32)
    assert sketch.shape == (1, 32, 32)
    assert sketch[0, 2, 2].item() > 0.99 and sketch[0, 16].min().item() < 0.7
    assert sketch[0, 16].argmin().item() in (15, 16), "the thin bar in the middle survives the 200 -> 32 resize"


def test_photo_and_drawing_are_cropped_alike(tmp_path):
    """A 60x40 photo and its 120x80 drawing: a mark at the same relative spot lands on the same pixel."""
    photo = np.full((40, 60, 3), 255, np.uint8)
    photo[26:28, 40:42] = 0  # right of centre, inside the centred square crop (x 10..50)
    sketch = np.full((80, 120), 255, np.uint8)
    sketch[52:56, 80:84] = 0
    p = write(Image.fromarray(photo), tmp_path / "photo.png")
    s = write(Image.fromarray(sketch), tmp_path / "sketch.png")
    height, width = check_image_file(p)
    assert (height, width) == (40, 60)
    image = load_image(p, 20)
    drawn = load_sketch(s, 20, source_shape=(height, width))
    dark_photo = np.unravel_index(image.mean(0).argmin().item(), (20, 20))
    dark_sketch = np.unravel_index(drawn[0].argmin().item(), (20, 20))
    assert dark_photo == dark_sketch == (13, 15)  # rows 26-27 -> 13; columns 40-41, minus the crop's 10 -> 15
    assert square_box(60, 40) == (10, 0, 50, 40) and square_box(40, 61) == (0, 10, 40, 50)


def test_exif_rotation_is_applied(tmp_path):
    """A phone photo stored 40x20 with EXIF orientation 6 is shown (and drawn over) as 20x40."""
    pixels = np.full((20, 40, 3), 255, np.uint8)
    pixels[:, :20] = 0  # left half black as stored; the top half once rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif)
    assert check_image_file(path) == (40, 20)
    photo = load_image(path, 20)
    assert photo[:, 2, 10].max() < 0.1 and photo[:, 17, 10].min() > 0.9
    with pytest.raises(ImageError, match="20x40"):
        load_sketch(path, 20)


def test_inverted_drawing_warns_but_is_kept(tmp_path, caplog):
    path = write(Image.fromarray(255 - drawing()), tmp_path / "inverted.png")
    with caplog.at_level(logging.WARNING, logger="diffsketch.training.styles"):
        sketch = load_sketch(path, 40)
    assert "mostly dark" in caplog.text and "inverted.png" in caplog.text
    assert sketch[0, 2, 2].item() == pytest.approx(0.0, abs=1e-4)


def _noise_png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_bad_files(tmp_path):
    garbage = tmp_path / "x.png"
    garbage.write_bytes(b"this is not a png" * 20)
    truncated = tmp_path / "cut.png"
    data = _noise_png(tmp_path / "full.png").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.png"
    for path in (garbage, truncated, missing, tmp_path):
        for load in (lambda p: load_image(p, 16), lambda p: load_sketch(p, 16), check_image_file):
            with pytest.raises(ImageError) as err:
                load(path)
            assert str(path) in str(err.value)
    with pytest.raises(ImageError, match=r"does not exist; set example\.sketch"):
        load_sketch(missing, 16)
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path, 16)
    assert check_image_file(tmp_path / "full.png") == (64, 64)


def test_save_round_trip(tmp_path):
    sketch = torch.rand(1, 8, 12)
    save_sketch(sketch, tmp_path / "a" / "b" / "sketch.png")
    saved = opened(tmp_path / "a" / "b" / "sketch.png")
    assert saved.mode == "L" and saved.size == (12, 8)
    assert torch.allclose(torch.from_numpy(np.asarray(saved) / 255.0).float(), sketch[0], atol=0.5 / 255 + 1e-6)
    image = torch.rand(3, 8, 8)
    save_image(image, tmp_path / "c" / "image.png")
    saved = opened(tmp_path / "c" / "image.png")
    assert saved.mode == "RGB"
    assert torch.allclose(load_image(tmp_path / "c" / "image.png", 8), image, atol=0.5 / 255 + 1e-6)
