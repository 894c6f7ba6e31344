"""`diffsketch serve` without a browser: the download header helper and the server's routes over HTTP.

The app is served by uvicorn in a thread (as in tests/test_web.py) and spoken to with urllib.
"""

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import serving

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("coffee_sketch.png", "attachment; filename=\"coffee_sketch.png\"; filename*=UTF-8''coffee_sketch.png"),
        ("café_sketch.svg", "attachment; filename=\"cafe_sketch.svg\"; filename*=UTF-8''caf%C3%A9_sketch.svg"),
        ("写真_sketch.png", "attachment; filename=\"sketch.png\"; filename*=UTF-8''%E5%86%99%E7%9C%9F_sketch.png"),
        (
            "🎨 cat_sketch.png",
            "attachment; filename=\"cat_sketch.png\"; filename*=UTF-8''%F0%9F%8E%A8%20cat_sketch.png",
        ),
        ('a"b\\c;d.png', "attachment; filename=\"a_b_c_d.png\"; filename*=UTF-8''a%22b%5Cc%3Bd.png"),
        ("写真.png", "attachment; filename=\"download.png\"; filename*=UTF-8''%E5%86%99%E7%9C%9F.png"),
    ],
)
def test_content_disposition_by_hand(filename, expected):
    """Headers written out by hand from RFC 6266 / RFC 5987: an ASCII fallback, then the UTF-8 name percent-encoded."""
    from diffsketch.extractor.web import content_disposition

    header = content_disposition(filename)
    assert header == expected
    header.encode("latin-1")  # what Starlette does with every header value


def _style(folder, student):
    folder.mkdir(parents=True)
    shutil.copy(student, folder / "student.safetensors")
    shutil.copy(student.with_suffix(".json"), folder / "student.json")
    (folder / "style.json").write_text(json.dumps({"name": folder.name, "licence": "CC-BY-4.0", "teacher": "tiny"}))
    return folder


@contextmanager
def _serving(styles):
    from diffsketch.extractor.web import create_app

    with serving(create_app(styles, device="cpu")) as url:
        yield url


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post(url, body: bytes):
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def _photo() -> bytes:
    from diffsketch.evaluation.data import PHOTOS

    return PHOTOS["coins"].source_path().read_bytes()


def test_downloads_carry_any_file_name(student, tmp_path):
    """Japanese, emoji, accents and quotes in the uploaded name: PNG, SVG and ZIP answer 200, named in ``filename*``."""
    with _serving(_style(tmp_path / "styles" / "ink", student).parent) as base:
        ids = []
        for name in ("写真.png", "🎨 cat.png", 'café "1" x.jpg'):
            status, answer = _post(f"{base}/api/sketch?style=ink&size=64&name={urllib.parse.quote(name)}", _photo())
            assert status == 200, answer
            stem = name.rsplit(".", 1)[0].replace('"', "_")
            assert answer["name"] == stem
            ids.append(answer["id"])
            for kind, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
                status, headers, body = _get(base + answer[kind])
                assert status == 200 and body.startswith(magic)
                value = headers["content-disposition"]
                assert value.startswith('attachment; filename="')
                encoded = value.split("; filename*=UTF-8''", 1)[1]
                assert urllib.parse.unquote(encoded, errors="strict") == f"{stem}_sketch.{kind}"
        request = urllib.request.Request(f"{base}/api/zip", data=json.dumps({"ids": ids}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and "filename*=UTF-8''sketches.zip" in response.headers["Content-Disposition"]


def test_styles_may_name_one_style_folder(student, tmp_path):
    """``--styles styles/cat``: the style folder itself serves that one style; a folder of styles lists them."""
    cat = _style(tmp_path / "styles" / "cat", student)
    _style(tmp_path / "styles" / "dog", student)
    with _serving(cat) as base:
        status, _, body = _get(f"{base}/api/styles")
        info = json.loads(body)
        assert status == 200 and [s["name"] for s in info["styles"]] == ["cat"]
        assert info["styles"][0]["licence"] == "CC-BY-4.0"
        status, answer = _post(f"{base}/api/sketch?style=cat&size=64", _photo())
        assert status == 200 and answer["width"] == 64
        assert _post(f"{base}/api/sketch?style=dog&size=64", _photo())[0] == 404  # only the style named
    with _serving(cat.parent) as base:
        assert [s["name"] for s in json.loads(_get(f"{base}/api/styles")[2])["styles"]] == ["cat", "dog"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with _serving(empty) as base:
        info = json.loads(_get(f"{base}/api/styles")[2])
        assert info["styles"] == [] and info["folder"] == str(empty)


def test_an_upload_is_sketched_upright(student, tmp_path):
    """An upload is an image file's bytes: its EXIF orientation (6: turned 90 degrees clockwise) is
    applied, as the browser shows the photo. Oracle: the stored pixels turned by numpy, through the API."""
    import io

    import numpy as np
    from PIL import Image

    from diffsketch import SketchExtractor

    with Image.open(io.BytesIO(_photo())) as im:
        stored = np.array(im.convert("RGB"))[:60, :90]
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif.tobytes())
    folder = _style(tmp_path / "styles" / "ink", student)
    with _serving(folder.parent) as base:
        status, answer = _post(f"{base}/api/sketch?style=ink&name=phone.png", buffer.getvalue())
        assert status == 200 and (answer["width"], answer["height"]) == (60, 90)
        status, _, png = _get(base + answer["png"])
    expected = np.asarray(SketchExtractor.load(folder, "cpu")(np.ascontiguousarray(np.rot90(stored, k=-1))))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


def test_result_urls_draw_the_line_controls(student, tmp_path):
    """The kept sketch drawn with the controls in the query: colours read back from the pixels, a bad control is a 400."""
    import io

    import numpy as np
    from PIL import Image

    with _serving(_style(tmp_path / "styles" / "ink", student).parent) as base:
        status, answer = _post(f"{base}/api/sketch?style=ink&size=64&line_color=%23ff0000", _photo())
        assert status == 200 and "line_color=%23ff0000" in answer["png"]
        grey = np.asarray(Image.open(io.BytesIO(_get(base + answer["png"].split("?")[0])[2])))
        red = np.asarray(Image.open(io.BytesIO(_get(base + answer["png"])[2])))
        assert red.shape == (*grey.shape, 3) and (red[..., 0] == 255).all() and np.array_equal(red[..., 2], grey)
        clear = np.asarray(Image.open(io.BytesIO(_get(base + answer["png"].split("?")[0] + "?background=transparent")[2])))
        assert clear.shape == (*grey.shape, 4) and np.array_equal(clear[..., 3], 255 - grey)
        wide = np.asarray(Image.open(io.BytesIO(_get(base + answer["png"].split("?")[0] + "?threshold=0.5&line_width=3")[2])))
        thin = np.asarray(Image.open(io.BytesIO(_get(base + answer["png"].split("?")[0] + "?threshold=0.5")[2])))
        assert (wide == 0).sum() > (thin == 0).sum() and not ((thin == 0) & (wide != 0)).any()
        status, _, body = _get(base + answer["png"].split("?")[0] + "?line_width=99")
        assert status == 400 and b"--line-width" in body
        status, _, body = _get(base + answer["svg"].split("?")[0] + "?line_color=sky")
        assert status == 400 and b"not a colour" in body
