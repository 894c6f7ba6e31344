"""`diffsketch serve`: the page in a real headless Chromium (Debian's package, driven by Playwright).

A tiny random student serves as the style, so each sketch takes milliseconds. Screenshots are kept
in ``test-artifacts/web/`` (git-ignored) for a look at the page.
"""

import io
import json
import shutil
import struct
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, REPO, serving
from PIL import Image

ARTIFACTS = REPO / "test-artifacts" / "web"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium package (apt-get install -y chromium)"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def styles(student, tmp_path_factory):
    """A styles folder with two styles (the tiny student, and a second copy), plus a stray file and a hidden folder."""
    root = tmp_path_factory.mktemp("styles")
    for name in ("ink", "pencil"):
        (root / name).mkdir()
        shutil.copy(student, root / name / "student.safetensors")
        shutil.copy(student.with_suffix(".json"), root / name / "student.json")
    (root / ".hidden").mkdir()
    (root / "notes.txt").write_text("not a style")
    return root


@pytest.fixture(scope="module")
def server(styles):
    """The app served by uvicorn in a thread, on a free port; yields its base URL."""
    from diffsketch.extractor.web import create_app

    app = create_app(styles, device="cpu", max_upload_mb=25, max_pixels=40_000_000)
    with serving(app) as url:
        yield url, app


@pytest.fixture
def page(browser, server, request):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server[0] + "/")
    page.wait_for_selector("#style option", state="attached")
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Packaged photos (diffsketch.evaluation.data) as files: coffee at its size, and small crops for the batch test."""
    from diffsketch.evaluation.data import PHOTOS

    folder = tmp_path_factory.mktemp("web-photos")
    coffee = folder / "coffee.png"
    shutil.copy(PHOTOS["coffee"].source_path(), coffee)
    crops = []
    for i, name in enumerate(["astronaut", "chelsea", "camera", "coins"] * 4):
        with Image.open(PHOTOS[name].source_path()) as im:
            path = folder / f"crop{i:02d}.png"
            im.convert("RGB").crop((8 * i, 0, 8 * i + 96, 72)).save(path)
            crops.append(path)
    return coffee, crops


def _bad_files(folder: Path) -> dict[str, Path]:
    """A text file named .png, a truncated PNG, and a valid 20,000 x 20,000 PNG (1-bit, about 50 kB)."""
    text = folder / "notes.png"
    text.write_text("this is a text file, not a picture\n")
    from diffsketch.evaluation.data import PHOTOS

    whole = PHOTOS["chelsea"].source_path()
    buffer = io.BytesIO()
    with Image.open(whole) as im:
        im.save(buffer, format="PNG")
    truncated = folder / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    side = 20_000
    compressor, rows = zlib.compressobj(9), []
    row = b"\x00" + b"\xff" * (side // 8)  # filter byte + one bit per pixel, white
    for _ in range(side):
        rows.append(compressor.compress(row))
    rows.append(compressor.flush())
    huge = folder / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(rows)) + chunk(b"IEND", b""))  # fmt: skip
    return dict(text=text, truncated=truncated, huge=huge)


def _displayed_pixels(page, selector: str) -> np.ndarray:
    """The pixels of an <img> as the browser decoded them (drawn onto a canvas), red channel."""
    values = page.eval_on_selector(
        selector,
        """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
                    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
                    const d = g.getImageData(0, 0, c.width, c.height).data; const out = new Array(c.width * c.height);
                    for (let i = 0; i < out.length; i++) out[i] = d[4 * i]; return [c.width, c.height, out]; }""",
    )
    width, height, flat = values
    return np.asarray(flat, dtype=np.uint8).reshape(height, width)


def test_upload_shows_the_api_sketch_and_downloads_work(page, server, styles, photo_files, tmp_path):
    from diffsketch import SketchExtractor

    coffee, _ = photo_files
    assert page.locator("#style option").all_inner_texts() == ["ink", "pencil"]  # the stray file and hidden folder are not styles
    page.select_option("#size", "256")
    page.set_input_files("#files", str(coffee))
    page.wait_for_selector(".card .sketch-image")
    page.wait_for_selector("text=1 of 1 done")
    shown = _displayed_pixels(page, ".card .sketch-image")

    expected = np.asarray(SketchExtractor.load(styles / "ink", "cpu")(coffee, size=256))  # what Python code gets
    assert shown.shape == expected.shape == (171, 256)  # 600 x 400 capped to a long side of 256
    np.testing.assert_array_equal(shown, expected)

    with page.expect_download() as png:
        page.click(".card a.png")
    data = Path(png.value.path()).read_bytes()
    assert data.startswith(b"\x89PNG") and png.value.suggested_filename == "coffee_sketch.png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), expected)

    with page.expect_download() as svg:
        page.click(".card a.svg")
    text = Path(svg.value.path()).read_text()
    assert text.startswith("<?xml") and "<path" in text and 'width="256"' in text

    with page.expect_download() as archive:
        page.click("#zip")
    with zipfile.ZipFile(archive.value.path()) as z:
        assert sorted(z.namelist()) == ["coffee_sketch.png", "coffee_sketch.svg"]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(z.read("coffee_sketch.png")))), expected)


def test_bad_files_get_a_clear_message_and_the_server_keeps_answering(page, server, photo_files, tmp_path):
    bad = _bad_files(tmp_path)
    page.set_input_files("#files", [str(bad["text"]), str(bad["truncated"]), str(bad["huge"])])
    page.wait_for_selector("text=3 of 3 done", timeout=30_000)
    messages = {page.locator(".card h2").nth(i).inner_text(): page.locator(".card").nth(i).locator(".error").inner_text() for i in range(3)}
    assert "not an image file" in messages["notes.png"]
    assert "damaged or truncated" in messages["truncated.png"]
    assert "400 megapixels" in messages["huge.png"] and "limit is 40 megapixels" in messages["huge.png"]
    assert page.locator(".card.failed").count() == 3

    coffee, _ = photo_files  # still answering: a good photo after the bad ones
    page.set_input_files("#files", str(coffee))
    page.wait_for_selector(".card .sketch-image")
    with urllib.request.urlopen(server[0] + "/api/styles", timeout=10) as response:
        assert [s["name"] for s in json.load(response)["styles"]] == ["ink", "pencil"]


def test_sixteen_uploads_at_once_all_complete(page, server, photo_files):
    _, crops = photo_files
    page.select_option("#style", "pencil")
    page.select_option("#mode", "binary")
    page.set_input_files("#files", [str(p) for p in crops])
    page.wait_for_selector("text=16 of 16 done", timeout=60_000)
    assert page.locator(".card .sketch-image").count() == 16
    assert page.locator(".card.failed").count() == 0
    sizes = page.locator(".card .meta").all_inner_texts()
    assert sizes == ["96 × 72 px"] * 16
    binary = _displayed_pixels(page, ".card .sketch-image >> nth=0")
    assert set(np.unique(binary)) <= {0, 255}  # the threshold reached the server


def test_server_limits_and_style_names(server, styles):
    from diffsketch.evaluation.data import PHOTOS

    base, app = server
    data = PHOTOS["coins"].source_path().read_bytes()

    def post(query: str, body: bytes):
        request = urllib.request.Request(f"{base}/api/sketch?{query}", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    for name in ("../ink", "ink/../pencil", str(styles / "ink"), "notes.txt", ".hidden"):
        status, answer = post(f"style={urllib.parse.quote(name)}", data)
        assert status == 404 and "no style named" in answer["error"]
    status, answer = post("style=ink&threshold=2", data)
    assert status == 400 and "between 0 and 1" in answer["error"]
    state = app.state.diffsketch
    state.max_upload = 1000
    try:
        status, answer = post("style=ink", data)
        assert status == 413 and "upload limit" in answer["error"]
    finally:
        state.max_upload = 25_000_000
    assert post("style=ink", data)[0] == 200 and post("style=ink", data)[0] == 200
    assert set(state.extractors) <= {"ink", "pencil"} and len(state.extractors) == len(state.locks)  # one model per style


def test_any_file_name_previews_and_downloads(page, server, photo_files, tmp_path):
    """Photos named in Japanese and with an emoji: both previews load, and the PNG / SVG downloads
    answer 200 with the name in ``filename*`` (UTF-8, percent-encoded, RFC 5987)."""
    coffee, _ = photo_files
    names = ["写真.png", "🎨 cat.png"]
    for name in names:
        shutil.copy(coffee, tmp_path / name)
    page.select_option("#size", "256")
    page.set_input_files("#files", [str(tmp_path / name) for name in names])
    page.wait_for_selector("text=2 of 2 done", timeout=30_000)
    assert page.locator(".card.failed").count() == 0
    for name in names:
        card = page.locator(".card", has=page.locator("h2", has_text=name))
        assert card.count() == 1
        assert card.locator(".photo img").evaluate("img => img.complete && img.naturalWidth") == 600
        assert card.locator(".sketch-image").evaluate("img => img.complete && img.naturalWidth") == 256
        stem = name[: -len(".png")]
        for kind in ("png", "svg"):
            href = card.locator(f"a.{kind}").get_attribute("href")
            with urllib.request.urlopen(server[0] + href, timeout=30) as response:
                assert response.status == 200
                header = response.headers["Content-Disposition"]
                body = response.read()
            assert body.startswith(b"\x89PNG" if kind == "png" else b"<?xml")
            encoded = header.split("filename*=", 1)[1]
            assert encoded.startswith("UTF-8''")
            assert urllib.parse.unquote(encoded[len("UTF-8''"):], errors="strict") == f"{stem}_sketch.{kind}"
            assert card.locator(f"a.{kind}").get_attribute("download") == f"{stem}_sketch.{kind}"


def test_a_sketch_that_cannot_load_says_so(page, photo_files):
    """When the sketch's PNG does not load (here: the server answers 500), the card says so instead of a broken image."""
    coffee, _ = photo_files
    page.route("**/api/result/*.png", lambda route: route.fulfill(status=500, body="failed"))
    page.select_option("#size", "256")
    page.set_input_files("#files", str(coffee))
    page.wait_for_selector("text=1 of 1 done")
    assert page.locator(".card .sketch-image").count() == 0
    assert "could not be shown" in page.locator(".card .sketch").inner_text()
    assert page.locator(".card a.png").count() == 1  # the links stay


def _loaded(page, fragment: str) -> None:
    """Wait until the card's sketch image shows a URL holding ``fragment`` and has finished loading."""
    page.wait_for_function(
        """fragment => { const img = document.querySelector('.card .sketch-image');
                         return img && img.src.includes(fragment) && img.complete && img.naturalWidth > 0; }""",
        arg=fragment,
    )


def test_line_sliders_preview_live_and_nothing_overlaps(page, server, photo_files):
    """Moving the line-width slider redraws the shown sketch with wider strokes (every thin stroke's pixel
    stays ink, and there is more ink); the links follow; the controls do not overlap at 1280 px."""
    coffee, _ = photo_files
    page.set_viewport_size({"width": 1280, "height": 800})
    page.select_option("#size", "256")
    page.set_input_files("#files", str(coffee))
    page.wait_for_selector("text=1 of 1 done")
    page.select_option("#mode", "binary")
    _loaded(page, "threshold=0.5")
    thin = _displayed_pixels(page, ".card .sketch-image")
    assert set(np.unique(thin)) <= {0, 255} and 0 < (thin == 0).mean() < 1

    page.locator("#line-width").fill("3")
    _loaded(page, "line_width=3")
    wide = _displayed_pixels(page, ".card .sketch-image")
    assert page.locator("#line-width-value").inner_text() == "3.00×"
    assert not ((thin == 0) & (wide != 0)).any()  # wider strokes cover the thin ones
    assert (wide == 0).sum() > 1.2 * (thin == 0).sum()
    assert "line_width=3" in page.locator(".card a.png").get_attribute("href")

    page.check("#transparent")
    _loaded(page, "background=transparent")
    assert "see-through" in page.locator(".card .sketch-image").get_attribute("class")
    assert "background=transparent" in page.locator(".card a.svg").get_attribute("href")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "line-controls.png"), full_page=True)
    boxes = page.eval_on_selector_all(".controls > *", "els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })")
    for i, a in enumerate(boxes):
        assert a[2] <= 1280, f"control {i} runs off the page"
        for j, b in enumerate(boxes[:i]):
            overlap = min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5
            assert not overlap, f"controls {j} and {i} overlap: {b} {a}"
