"""The HTML report: every figure present as an inline PNG, tables, escaping, offline, saved results."""

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from diffsketch.analysis.timesteps import AnalysisResult
from diffsketch.analysis.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = [
    "pca-timestep",
    "pca-class",
    "pca-3d",
    "explained-variance",
    "elbow",
    "silhouette",
    "cluster-histograms",
    "selection-distance-plot",
]
EVIL_CLASS = "<script>alert('x')</script>"


# Made-up selection distances for k = 2..5 (columns: representative, uniform, random, random_std); k = 4 is chosen.
SELECTION_CURVE = np.array([[2.0, 2.5, 3.0, 0.4], [1.5, 2.0, 2.6, 0.3], [1.125, 1.75, 2.25, 0.375], [0.9, 1.4, 1.9, 0.2]])


def make_result(pca_dims: int = 3, steps: int = 10, trajectories: int = 6, selection: bool = True) -> AnalysisResult:
    """A small, made-up analysis: 10 DDIM steps, 6 trajectories of 3 classes, k = 4 (``selection``: with selection
    distances; without, as an analysis saved before them)."""
    rng = np.random.default_rng(0)
    timesteps = np.arange(steps)[::-1] * 100 + 1  # 901, 801, ..., 1 (denoising order)
    row_step = np.tile(np.arange(steps), trajectories)
    row_trajectory = np.repeat(np.arange(trajectories), steps)
    row_label = row_trajectory % 3
    projection = (rng.normal(size=(len(row_step), pca_dims)) + row_step[:, None] * 0.5).astype(np.float32)
    row_cluster = np.minimum(row_step * 4 // steps, 3)  # 4 clusters of neighbouring timesteps
    selected = np.array([1, 4, 6, 8])
    order = np.argsort(timesteps[selected])
    selected = selected[order]
    selected_cluster = row_cluster[selected]
    cluster_sizes = np.array([(row_cluster == c).sum() for c in selected_cluster])
    ratio = np.array([0.4, 0.2, 0.1, 0.05, 0.03][:pca_dims])
    extra = dict(selection_distance=SELECTION_CURVE[2], selection_k=np.arange(2, 6), selection_curve=SELECTION_CURVE)
    return AnalysisResult(
        **(extra if selection else {}),
        timesteps=timesteps,
        row_step=row_step,
        row_trajectory=row_trajectory,
        row_label=row_label,
        classes=["animals", "food", EVIL_CLASS],
        projection=projection,
        explained_variance_ratio=ratio,
        k_values=np.arange(2, 6),
        inertia=np.array([100.0, 60.0, 45.0, 40.0]),
        silhouette=np.array([0.30, 0.42, 0.47, 0.41]),
        k=4,
        row_cluster=row_cluster,
        selected=selected,
        selected_cluster=selected_cluster,
        cluster_sizes=cluster_sizes,
        meta=dict(
            strategy="kmeans",
            layer_weighting="equal",
            seed=0,
            k_auto=4,
            knee_k=3,
            model="tiny",
            store="data/store.zarr",
            store_fingerprint="abc123",
            trajectories=trajectories,
            feature_dim=1234,
            layers=["up_blocks.0", "up_blocks.1"],
            half="cond",
        ),
    )


class PageParser(HTMLParser):
    """Collects the <img> sources inside each <figure id=...>, and the text of each <table id=...>."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self.tables: dict[str, str] = {}
        self.figure: str | None = None
        self.table: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figure = attrs.get("id")
            self.figures[self.figure] = []
        elif tag == "img" and self.figure is not None:
            self.figures[self.figure].append(attrs.get("src", ""))
        elif tag == "table":
            self.table = attrs.get("id")
            self.tables[self.table] = ""

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag == "table":
            self.table = None

    def handle_data(self, data):
        if self.table is not None:
            self.tables[self.table] += data + " "
        self.text.append(data)


def parse(path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return base64.b64decode(src[len(prefix) :], validate=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    result = make_result()
    path = write_report(result, tmp_path_factory.mktemp("report") / "out")
    return result, path


def test_every_figure_is_an_inline_png(report):
    _, path = report
    assert path.name == "index.html" and path.is_file()
    page = parse(path)
    for fig_id in FIGURES:
        assert fig_id in page.figures, f"figure {fig_id} missing"
        assert page.figures[fig_id], f"figure {fig_id} has no <img>"
        png = decode_png(page.figures[fig_id][0])
        assert png[:8] == PNG_MAGIC
        assert len(png) > 5_000, f"{fig_id}: suspiciously small PNG ({len(png)} bytes)"


def test_figures_have_captions(report):
    _, path = report
    text = path.read_text(encoding="utf-8")
    assert text.count("<figcaption>") == len(FIGURES) + 1  # and the timeline's (inline SVG)
    assert "side-by-side" in text  # the two PCA scatters are placed next to each other


def test_the_timeline_labels_every_chosen_timestep_in_lanes_that_do_not_overlap(report):
    from diffsketch.analysis.report import LABEL_CHAR_WIDTH, TIMELINE_MARGIN, TIMELINE_WIDTH, timeline_svg

    result = make_result(steps=50)  # timesteps 4901 ... 1 over 50 steps; chosen: four neighbours and one far away
    result.timesteps = np.arange(50)[::-1] * 20 + 1  # 981, 961, ..., 1
    result.selected = np.array([0, 1, 2, 3, 40])
    svg = timeline_svg(result)
    labels = re.findall(r'<text class="t-label" x="([\d.]+)" y="([\d.]+)"[^>]*data-t="(\d+)">t=(\d+)</text>', svg)
    assert [int(t) for *_, t in labels] == [981, 961, 941, 921, 181] and all(a == b for *_, a, b in labels)
    # positions: t = 1000 at the left margin, t = 0 at the right (hand-computed for t = 981 and 181)
    inner = TIMELINE_WIDTH - 2 * TIMELINE_MARGIN
    assert float(labels[0][0]) == pytest.approx(TIMELINE_MARGIN + 19 / 1000 * inner, abs=0.05)
    assert float(labels[4][0]) == pytest.approx(TIMELINE_MARGIN + 819 / 1000 * inner, abs=0.05)
    # neighbours 20 of 1000 apart (18.4 units) with labels 5 x 8.06 = 40.3 units wide: the first three in lanes 0, 1, 2;
    # the fourth is 55.2 units from the first, 14.9 clear of it (gap 8): lane 0 again, as is the far one. 3 lanes of 18:
    # lane 0's baseline at 10 + 3 * 18 = 64
    assert [float(y) for _, y, *_ in labels] == [64, 46, 28, 64, 64]
    boxes = [(float(x) - len(f"t={t}") * LABEL_CHAR_WIDTH / 2, float(x) + len(f"t={t}") * LABEL_CHAR_WIDTH / 2, float(y))
             for x, y, t, _ in labels]  # fmt: skip
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] != b[2] or a[1] <= b[0] or b[1] <= a[0]  # one lane: side by side


def test_tables_list_the_chosen_timesteps(report):
    result, path = report
    page = parse(path)
    assert {"summary", "timesteps"} <= set(page.tables)
    summary, rows = page.tables["summary"], page.tables["timesteps"]
    for index, size in zip(result.selected, result.cluster_sizes):
        t = str(int(result.timesteps[index]))
        assert f"t={t}" in summary
        assert t in rows.split() and str(int(index)) in rows.split() and str(int(size)) in rows.split()
    for needle in ["tiny", "data/store.zarr", "1234", "kmeans", "equal", "k_auto = 4", "knee_k = 3", "0.470", "70.0%"]:
        assert needle in summary, needle


def _without_plotly(text: str) -> str:
    """The page without the inlined plotly.js bundle (whose source mentions URLs it never fetches here)."""
    from plotly.offline import get_plotlyjs

    bundle = f"<script>{get_plotlyjs()}</script>"
    assert text.count(bundle) == 1  # inlined exactly once, not linked
    return text.replace(bundle, "")


def test_text_is_escaped(report):
    _, path = report
    text = _without_plotly(path.read_text(encoding="utf-8"))
    assert EVIL_CLASS not in text and "</script>alert" not in text  # neither in the HTML nor in the explorer's JSON
    assert "&lt;script&gt;" in text
    assert EVIL_CLASS in " ".join(parse(path).text)  # shown as text, unescaped by the parser
    scripts = [chunk.split(">", 1)[0] for chunk in text.split("<script")[1:]]
    assert scripts == [' id="explorer-data" type="application/json"', ""]  # the data and the explorer's own code


def test_page_is_offline(report):
    _, path = report
    text = _without_plotly(path.read_text(encoding="utf-8"))
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", text)  # no external source of any kind
    for src in parse(path).figures.values():
        assert not src or b"http" not in decode_png(src[0])  # no URL in the PNG metadata either


def test_no_3d_figure_with_two_pca_dims(tmp_path):
    page = parse(write_report(make_result(pca_dims=2), tmp_path))
    assert "pca-3d" not in page.figures
    assert set(FIGURES) - {"pca-3d"} <= set(page.figures)


def test_report_from_saved_analysis(tmp_path):
    result = make_result()
    result.save(tmp_path / "analysis")
    loaded = AnalysisResult.load(tmp_path / "analysis")
    assert loaded.classes == result.classes and loaded.k == result.k
    assert loaded.meta == result.meta
    np.testing.assert_array_equal(loaded.selected, result.selected)
    np.testing.assert_array_equal(loaded.projection, result.projection)
    page = parse(write_report(loaded, tmp_path / "report"))
    assert set(FIGURES) <= set(page.figures)
    assert str(int(loaded.timesteps[loaded.selected[0]])) in page.tables["timesteps"].split()


def test_large_scatter_is_subsampled(tmp_path, monkeypatch):
    import diffsketch.analysis.report as report_module

    monkeypatch.setattr(report_module, "MAX_SCATTER_POINTS", 25)
    text = write_report(make_result(), tmp_path).read_text(encoding="utf-8")
    assert "subsample of 25 of the 60 points" in text


def test_strategy_without_clusters(tmp_path):
    """uniform/random/fixed: no cluster per timestep (-1); the tables show a dash, sizes are points per step."""
    result = make_result(pca_dims=2)
    result.meta["strategy"] = "uniform"
    result.selected_cluster = np.full(len(result.selected), -1)
    result.cluster_sizes = np.full(len(result.selected), 6)
    path = write_report(result, tmp_path)
    page = parse(path)
    assert page.tables["timesteps"].split().count("—") == len(result.selected)
    assert "no bar is highlighted" in path.read_text(encoding="utf-8")


def test_explorer_without_previews_says_so_and_lists_every_class():
    """An analysis saved before the previews: the explorer still draws, and the page says the card has no thumbnail."""
    import json

    from diffsketch.analysis.report import explorer_html

    result = make_result()
    page = explorer_html(result)
    assert "saved without trajectory previews" in page
    data = json.loads(page.split('<script id="explorer-data" type="application/json">', 1)[1].split("</script>", 1)[0])
    names = [t["name"] for t in data["figures"]["2d"]["data"]]
    assert names == ["animals", "food", EVIL_CLASS, "chosen timesteps"]  # the JSON escapes decode back to the text
    chosen = [t for t in data["figures"]["2d"]["data"] if t["name"] == "chosen timesteps"][0]
    assert sorted({c[2] for c in chosen["customdata"]}) == sorted(result.selected.tolist())
    assert all(c[1] == -1 for c in chosen["customdata"]) and data["thumbnails"] == []


def test_selection_distance_table_and_plot(report):
    _, path = report
    page = parse(path)
    table = page.tables["selection-distance"].split()
    # the chosen k = 4 row of SELECTION_CURVE, as printed (4 decimals)
    for value in ["1.1250", "1.7500", "2.2500", "0.3750"]:
        assert value in table, value
    assert table.index("1.1250") < table.index("1.7500") < table.index("2.2500")  # representative, uniform, random
    assert table[-2:] == ["2.2500", "0.3750"]  # the random row ends with its mean, then its standard deviation
    # uniform at k = 4 of 10 steps: DDIM indices round(i * 9 / 3) = 0, 3, 6, 9 -> t = 901, 601, 301, 1
    assert "901, 601, 301, 1" in page.tables["selection-distance"]
    assert "200 seeded draws" in page.tables["selection-distance"]
    assert decode_png(page.figures["selection-distance-plot"][0])[:8] == PNG_MAGIC


def test_selection_distance_round_trips_and_an_older_analysis_omits_it(tmp_path):
    result = make_result()
    result.save(tmp_path / "analysis")
    loaded = AnalysisResult.load(tmp_path / "analysis")
    assert loaded.selection_distances() == dict(zip(["representative", "uniform", "random", "random_std"], SELECTION_CURVE[2]))
    assert [row["k"] for row in loaded.selection_distance_by_k()] == [2, 3, 4, 5]
    assert "selection-distance" in parse(write_report(loaded, tmp_path / "report")).tables

    old = make_result(selection=False)
    path = write_report(old, tmp_path / "old")
    page = parse(path)
    assert "selection-distance" not in page.tables and "selection-distance-plot" not in page.figures
    assert "Selection distance" not in path.read_text(encoding="utf-8")
    assert set(FIGURES) - {"selection-distance-plot"} <= set(page.figures)
