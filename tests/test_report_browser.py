"""The analysis report's PCA explorer in a real headless Chromium (Debian's package, driven by Playwright).

The page is opened from a file:// URL with every other request recorded and refused, so "works
offline" means: nothing but the page itself is requested. Screenshots are kept in
``test-artifacts/report/`` (git-ignored).
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, needs_chromium
from diffsketch.analysis.report import FEATURE_MAP_CELL, FINAL_IMAGE_SIDE, write_report
from test_report import make_result

ARTIFACTS = REPO / "test-artifacts" / "report"
COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 20), (150, 40, 200), (20, 190, 200)]
POINTS_2D = "#explorer-2d .scatterlayer path.point"

pytestmark = [needs_chromium, pytest.mark.usefixtures("one_thread")]


def previewed_result():
    """The test_report analysis (6 trajectories, 3 classes, 10 steps) with a prompt and a one-colour thumbnail each."""
    result = make_result(trajectories=6)
    result.trajectory_ids = np.arange(6)
    result.prompts = np.array([f"prompt number {i} & <b>friends</b>" for i in range(6)])
    result.thumbnails = np.array([np.full((64, 64, 3), c, np.uint8) for c in COLOURS])
    return result


def with_feature_maps(result, shown: int = 2):
    """``result`` with made-up feature maps of ``shown`` trajectories: the tiny model's UNet layers at 128 px, one smooth
    colour pattern per (trajectory, layer, chosen timestep), and a gradient as each final image."""
    from types import SimpleNamespace

    from diffsketch.analysis.feature_maps import FeatureMaps
    from diffsketch.diffusion.features import unet_layers
    from diffsketch.diffusion.models import TINY_UNET_CONFIG

    layers = unet_layers(SimpleNamespace(**TINY_UNET_CONFIG), 128, 8)
    steps = np.sort(result.selected)
    maps = []
    for i, spec in enumerate(layers):
        y, x = np.mgrid[0 : spec.size, 0 : spec.size] / spec.size
        waves = [[np.stack([np.sin(np.pi * (x * (1 + j) + y * n + c / 3 + i / 7)) for c in range(3)], axis=-1)
                  for j in range(len(steps))] for n in range(shown)]  # fmt: skip
        maps.append(((np.asarray(waves) + 1) * 127.5).round().astype(np.uint8))
    ramp = np.linspace(0, 255, 128).astype(np.uint8)
    finals = np.stack([np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, ::-1], np.full((128, 128), 90 * n, np.uint8)), axis=-1)
                       for n in range(shown)])  # fmt: skip
    result.feature_maps = FeatureMaps(
        trajectory_ids=result.trajectory_ids[:shown], prompts=result.prompts[:shown], steps=steps,
        timesteps=result.timesteps[steps], layers=layers, maps=maps, explained=np.full((len(layers), 3), [0.3, 0.2, 0.1]),
        finals=finals,
    )  # fmt: skip
    result.meta["feature_map_seconds"] = 1.25
    return result


@pytest.fixture(autouse=True)
def no_static_figures(monkeypatch):
    """The matplotlib figures (tested in test_report.py) take seconds per page and play no part here."""
    import diffsketch.analysis.report as report_module

    monkeypatch.setattr(report_module, "_figures", lambda result: "")


@pytest.fixture
def open_report(browser, tmp_path, request):
    """Open a written report; yields (page, requests other than the page, page errors); screenshot at the end."""
    opened = []

    def _open(path):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        outside, errors = [], []
        url = path.resolve().as_uri()

        def route(r):
            if r.request.url == url:
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page.on("requestfailed", lambda req: outside.append(f"failed: {req.url}"))
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector(POINTS_2D, state="attached", timeout=30_000)
        opened.append((page, context))
        return page, outside, errors

    yield _open
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for n, (page, context) in enumerate(opened):
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{n}-page.png"), full_page=True)
        context.close()


def _point_centre(page, trace: int, index: int):
    box = page.locator(f"#explorer-2d .scatterlayer .trace:nth-child({trace + 1}) path.point").nth(index).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _pixel_of(data_uri: str):
    return Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))).convert("RGB").getpixel((32, 32))


def test_explorer_draws_hovers_toggles_and_filters_offline(open_report, tmp_path):
    result = previewed_result()
    page, outside, errors = open_report(write_report(result, tmp_path))
    labels, steps = result.row_label, result.row_step
    chosen = np.isin(steps, result.selected)

    # drawn: one SVG point per row of each class, plus the chosen timesteps' circles
    assert page.locator(POINTS_2D).count() == len(steps) + chosen.sum()
    for label in range(3):
        assert page.locator(f"#explorer-2d .scatterlayer .trace:nth-child({label + 1}) path.point").count() == (labels == label).sum()
    assert "All 60 points are drawn." in page.inner_text("#explorer-note")

    # hover: the first point of class 1 is row r (rows are drawn in order); its card shows r's details and thumbnail
    r = int(np.flatnonzero(labels == 1)[0])
    page.locator("#explorer-2d .plot-container").scroll_into_view_if_needed()
    x, y = _point_centre(page, trace=1, index=0)
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=5)
    card = page.locator("#hover-card")
    card.wait_for(state="visible", timeout=5_000)
    text = card.inner_text()
    trajectory = int(result.row_trajectory[r])
    assert f"prompt number {trajectory} & <b>friends</b>" in text  # shown as text, not markup
    assert result.classes[1] in text and f"trajectory {trajectory}" in text.replace("\n", " ").replace("\t", " ")
    assert f"{int(result.timesteps[steps[r]])} (DDIM index {int(steps[r])})" in text
    src = card.locator("img").get_attribute("src")
    assert src.startswith("data:image/jpeg;base64,")
    assert np.abs(np.subtract(_pixel_of(src), COLOURS[trajectory])).max() <= 8  # that trajectory's image
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") == 64
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "hover.png"))
    page.mouse.move(5, 5)

    # legend toggle: clicking class 1 hides exactly its points
    page.locator("#explorer-2d .legend .traces").nth(1).click()
    page.wait_for_function("document.getElementById('explorer-2d').data[1].visible === 'legendonly'")
    assert page.locator(POINTS_2D).count() == len(steps) + chosen.sum() - (labels == 1).sum()
    page.screenshot(path=str(ARTIFACTS / "class-hidden.png"))
    page.locator("#explorer-2d .legend .traces").nth(1).click()
    page.wait_for_function("document.getElementById('explorer-2d').data[1].visible === true")

    # timestep filter: DDIM indices 3..6 keep exactly those rows (and the chosen ones among them)
    for handle, value in (("#t-min", 3), ("#t-max", 6)):
        page.eval_on_selector(handle, f"el => {{ el.value = {value}; el.dispatchEvent(new Event('input')); }}")
    page.wait_for_function("document.body.dataset.filtered === '3-6'")
    keep = (steps >= 3) & (steps <= 6)
    assert page.locator(POINTS_2D).count() == keep.sum() + (keep & chosen).sum()
    assert f"t = {int(result.timesteps[3])} down to t = {int(result.timesteps[6])}" in page.inner_text("#t-range")
    page.locator("#explorer").screenshot(path=str(ARTIFACTS / "filtered.png"))

    assert page.locator("#explorer-3d").count() == 1  # 3 components: the 3-D view is there too
    assert not errors, errors
    assert not outside, outside  # no request left the page


def test_large_analysis_is_thinned_deterministically_and_says_so(open_report, tmp_path, monkeypatch):
    import diffsketch.analysis.report as report_module

    monkeypatch.setattr(report_module, "MAX_INTERACTIVE_POINTS", 25)
    result = previewed_result()
    assert report_module.explorer_html(result) == report_module.explorer_html(result)  # the same subsample every time
    page, outside, errors = open_report(write_report(result, tmp_path))
    assert "Drawing 25 of the 60 points" in page.inner_text("#explorer-note")
    drawn = np.sort(np.random.default_rng(0).permutation(60)[:25])  # oracle: seeded permutation, first 25
    chosen = np.isin(result.row_step[drawn], result.selected).sum()
    assert page.locator(POINTS_2D).count() == 25 + chosen
    rows = page.evaluate("document.getElementById('explorer-2d').data.slice(0, 3).flatMap(t => t.customdata.map(c => c[0]))")
    assert sorted(rows) == drawn.tolist()
    assert not errors and not outside


def test_feature_map_grids_are_drawn(open_report, tmp_path):
    result = with_feature_maps(previewed_result())
    fm = result.feature_maps
    page, outside, errors = open_report(write_report(result, tmp_path))
    section = page.locator("#feature-maps")
    section.scroll_into_view_if_needed()
    cells = page.locator("#feature-maps img.fm-cell")
    assert cells.count() == len(fm.trajectory_ids) * len(fm.layers) * len(fm.steps)
    drawn = cells.evaluate_all("imgs => imgs.map(i => [i.dataset.layer, i.complete, i.naturalWidth, i.clientWidth])")
    size = {spec.name: spec.size for spec in fm.layers}
    assert all(done and natural == size[layer] and width == FEATURE_MAP_CELL for layer, done, natural, width in drawn), drawn
    finals = page.locator("#feature-maps img.fm-final-image").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.clientWidth])")
    assert finals == [[128, FINAL_IMAGE_SIDE]] * len(fm.trajectory_ids)
    headers = page.locator("#feature-map-0 thead th").all_inner_texts()
    assert [h.split()[2] for h in headers[2:]] == [str(int(t)) for t in fm.timesteps]  # "t = 901 step 1": in denoising order
    assert "up3_res2" in page.locator("#feature-map-0 tbody tr").last.inner_text()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(ARTIFACTS / "feature-maps.png"))
    assert not errors, errors
    assert not outside, outside


# --- layout at 1280 x 800 (measured positions, not only screenshots) ----------------------------------

OVERLAPS = """els => {
  const boxes = els.map(e => e.getBoundingClientRect());
  const hits = [];
  boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b, j) => {
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) hits.push([i, i + 1 + j]);
  }));
  return hits;
}"""


def _layout_page(browser, path):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(path.resolve().as_uri())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return context, page


def test_analysis_page_opens_with_the_explorer_and_its_timeline_labels_do_not_overlap(browser, tmp_path):
    result = previewed_result()
    result.meta["model"] = "tiny"
    result.timesteps = np.arange(10)[::-1] * 20 + 801  # 981, 961, ... 801: every chosen label crowds its neighbours
    context, page = _layout_page(browser, write_report(result, tmp_path))
    page.wait_for_selector(POINTS_2D, state="attached", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "layout-analysis-top.png"))
    explorer = page.locator("#explorer").bounding_box()
    plot = page.locator("#explorer-2d").bounding_box()
    assert explorer["y"] < 400 and plot["y"] < 800, (explorer, plot)  # the explorer, then its plot, on the first screen
    note = page.locator("#smoke-note").bounding_box()
    assert note["y"] < explorer["y"] and "check that the pipeline runs end to end" in page.inner_text("#smoke-note")
    assert page.locator("#summary").bounding_box()["y"] > explorer["y"] + explorer["height"]  # the tables come after it
    labels = page.locator("#timeline text.t-label")
    assert labels.count() == len(result.selected)
    assert labels.evaluate_all(OVERLAPS) == []  # the rendered text boxes, font metrics and all
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    assert all(b["width"] > 10 and b["x"] >= 0 and b["x"] + b["width"] <= 1280 for b in boxes), boxes
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # nothing overflows the page
    page.locator("#timeline").screenshot(path=str(ARTIFACTS / "layout-timeline.png"))
    context.close()


def _wide_evaluation():
    """An evaluation of 12 methods on 2 photos: its grid (14 pictures a row) is far wider than the page."""
    from diffsketch.evaluation.protocol import EvalResult

    methods = [f"method_{i:02d}" for i in range(12)]
    rng = np.random.default_rng(0)
    picture = lambda: rng.integers(0, 255, (120, 160), dtype=np.uint8)  # noqa: E731
    rows = [dict(dataset="eval", image=f"eval/{n}.png", method=m, ssim=0.5, psnr=10.0, chamfer=3.0, f_score=0.4, lines=1)
            for n in ("a", "b") for m in methods]  # fmt: skip
    means = {m: dict(ssim=0.5 + i / 100, psnr=10.0, chamfer=None if i == 3 else 3.0 - i / 10, f_score=None if i == 3 else 0.4) for i, m in enumerate(methods)}
    grid = [dict(image=f"eval/{n}.png", photo=np.stack([picture()] * 3, -1), truth=picture(), outputs={m: picture() for m in methods})
            for n in ("a", "b")]  # fmt: skip
    summary = dict(images=2, ground_truth="dog", size=160, line_threshold=0.5, tolerance=0.0075, lpips=False, methods=methods,
                   notes=[], skipped=[], datasets={"eval": {"images": 2, "means": means}}, model="tiny",
                   seconds_per_image=dict.fromkeys(methods, 0.01))  # fmt: skip
    return EvalResult(rows, means, summary, grid)


def test_evaluation_page_scrolls_wide_tables_in_their_box(browser, tmp_path):
    from diffsketch.evaluation.report import render_html

    path = tmp_path / "index.html"
    path.write_text(render_html(_wide_evaluation()), encoding="utf-8")
    context, page = _layout_page(browser, path)
    page.locator("details").evaluate("d => d.open = true")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # the page itself never scrolls sideways
    body = page.locator("body").bounding_box()
    for box in page.locator(".wide").all():
        outer = box.bounding_box()
        assert outer["x"] >= body["x"] - 1 and outer["x"] + outer["width"] <= body["x"] + body["width"] + 1, outer
    grid_box = page.locator(".wide:has(#grid)")
    inner, outer = page.locator("#grid").bounding_box(), grid_box.bounding_box()
    assert inner["width"] > 1280 > outer["width"]  # the table is wider than the page, its box is not
    assert grid_box.evaluate("b => b.scrollWidth > b.clientWidth && getComputedStyle(b).overflowX === 'auto'")
    grid_box.evaluate("b => b.scrollLeft = b.scrollWidth")  # it scrolls inside its box
    assert grid_box.evaluate("b => b.scrollLeft") > 0
    assert page.locator("#smoke-note").bounding_box()["y"] < page.locator("#means").bounding_box()["y"]
    assert page.locator("#means td", has_text="no lines").count() == 2
    page.screenshot(path=str(ARTIFACTS / "layout-evaluation.png"))
    context.close()
