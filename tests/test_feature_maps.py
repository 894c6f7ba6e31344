"""Feature maps: the re-sampled full-resolution features against the store, the RGB reduction, the report's grid."""

import base64
import io
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import small_params
from diffsketch.store import zarr_store as store
from diffsketch.analysis.timesteps import AnalysisInputError, AnalysisResult, analyze
from diffsketch.cli.main import app
from diffsketch.store.collect import run_sample
from diffsketch.core.params import AnalyzeConfig, ModelConfig
from diffsketch.analysis.feature_maps import resample_features, to_rgb
from test_analysis import synthetic_store

SHOWN = 2  # trajectories with feature maps
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
    """A tiny store at 128 px (up-block layers 2, 4, 8 and 16 px) pooled to 2 x 2: both CFG halves, eta > 0 (per-step noise)."""
    folder = tmp_path_factory.mktemp("feature_maps")
    (folder / "prompts.txt").write_text("a photo of a horse in mud\na red bicycle\na bowl of ramen\n")
    params = small_params(folder / "prompts.txt", trajectories=SHOWN, resolution=128, pool=2, halves="both", eta=0.5)
    return run_sample(params, folder / "f.zarr", progress=False, model=tiny)


def analysis_cfg(**kw) -> AnalyzeConfig:
    return AnalyzeConfig(**dict(pca_dims=3, k_min=2, k_max=3, k=2, seed=0) | kw)


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


def cli_analyze(store_path, folder, feature_maps: int) -> None:
    """`diffsketch analyze` of the store into ``folder`` (analysis/, reports/, timesteps.json) with the tiny model on the CPU."""
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"id": "tiny", "device": "cpu"}, "analyze": dict(analysis_cfg(feature_maps=feature_maps))}))
    run = CliRunner().invoke(app, ["analyze", "--params", str(params), "--store", str(store_path), "--results", str(folder / "analysis"),
                                   "--timesteps", str(folder / "timesteps.json"), "--reports", str(folder / "reports"), "--no-progress"])  # fmt: skip
    assert run.exit_code == 0, run.output


@pytest.fixture(scope="module")
def with_maps(sampled, tiny, tmp_path_factory):
    """`diffsketch analyze` with feature maps of SHOWN trajectories: (its folder, the model params it loaded)."""
    import diffsketch.diffusion.models
    import diffsketch.analysis.report

    folder, loaded = tmp_path_factory.mktemp("with_maps"), []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diffsketch.diffusion.models, "load_model", lambda cfg: loaded.append(cfg) or tiny)  # the session's tiny model
        patch.setattr(diffsketch.analysis.report, "_figures", lambda result: "")  # the matplotlib figures (tested elsewhere) take seconds
        cli_analyze(sampled, folder, SHOWN)
    return folder, loaded


def test_resampled_features_pool_to_the_stored_ones(sampled, tiny):
    """Second route to the stored features: the trajectory sampled again, at full resolution, averaged over blocks."""
    root = store.open_store(sampled)
    steps, index = [3, 1], 1  # not in denoising order, not the first trajectory
    half = list(root.attrs["halves"]).index("cond")
    features = resample_features(tiny, root, index, steps, "cond")
    grid = int(root.attrs["pool"])
    assert sorted({spec["size"] for spec in root.attrs["unet_layers"]}) == [2, 4, 8, 16]  # 2: already at the store's grid
    for spec in root.attrs["unet_layers"]:
        full = features[spec["name"]].float().numpy()
        k, channels, side = full.shape[0], full.shape[1], full.shape[-1]
        assert (k, channels, side) == (len(steps), spec["channels"], spec["size"])  # full resolution
        pooled = full.reshape(k, channels, grid, side // grid, grid, side // grid).mean(axis=(3, 5))  # block means
        stored = np.asarray(root[f"unet/{spec['name']}"][index, steps, half], dtype=np.float32)
        scale = np.abs(stored).max()
        np.testing.assert_allclose(pooled, stored, rtol=0, atol=2e-3 * scale, err_msg=spec["name"])  # float16 rounding
        other = np.asarray(root[f"unet/{spec['name']}"][index, steps, 1 - half], dtype=np.float32)
        assert np.abs(pooled - other).max() > 10 * 2e-3 * scale  # the tolerance tells the two halves apart


def test_rgb_reduction_recovers_a_three_dimensional_signal():
    """Channels = a known 3-D signal mixed into 16 channels, plus tiny noise: each colour is one signal component
    (up to sign and scale), affine exactly where the percentile scaling does not clip."""
    rng = np.random.default_rng(0)
    shape = (2, 3, 8, 8)  # trajectories, timesteps, height, width
    raw = rng.uniform(-1, 1, size=(int(np.prod(shape)), 3))
    # centred, exactly uncorrelated components (so they are the principal ones) of distinct variances (a defined order)
    signal = np.linalg.qr(raw - raw.mean(axis=0))[0] * np.sqrt(len(raw)) * [3.0, 2.0, 1.0]
    mixing = np.linalg.qr(rng.normal(size=(16, 3)))[0].T  # (3, 16), orthonormal rows
    pixels = signal @ mixing + rng.normal(size=16) + 1e-4 * rng.normal(size=(len(signal), 16))
    features = np.moveaxis(pixels.reshape(*shape, 16), -1, -3)  # (2, 3, 16, 8, 8)
    rgb, explained = to_rgb(features)
    assert rgb.shape == (*shape, 3) and rgb.min() == 0.0 and rgb.max() == 1.0
    colours = rgb.reshape(-1, 3)
    for c in range(3):
        inside = (colours[:, c] > 0) & (colours[:, c] < 1)
        assert inside.mean() > 0.95  # only the 1% tails on either side are clipped
        design = np.stack([signal[inside, c], np.ones(inside.sum())], axis=1)
        coef, *_ = np.linalg.lstsq(design, colours[inside, c], rcond=None)
        np.testing.assert_allclose(design @ coef, colours[inside, c], atol=1e-3)
    variances = signal.var(axis=0)
    np.testing.assert_allclose(explained, variances / (variances.sum() + 16 * 1e-8), atol=1e-4)
    # the signs are fixed by the data, not its order: reversing the trajectories reverses the colours, nothing else
    np.testing.assert_allclose(to_rgb(features[::-1])[0][::-1], rgb, atol=1e-5)


class Grid(HTMLParser):
    """Per feature-map figure (by trajectory): the (layer, timestep) of every cell image and its source; the final images."""

    def __init__(self):
        super().__init__()
        self.cells, self.finals, self.figure = {}, {}, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure" and "feature-map" in attrs.get("class", ""):
            self.figure = int(attrs["data-trajectory"])
            self.cells[self.figure], self.finals[self.figure] = {}, []
        elif tag == "img" and self.figure is not None:
            if attrs.get("class") == "fm-cell":
                key = (attrs["data-layer"], int(attrs["data-timestep"]))
                assert key not in self.cells[self.figure], key
                self.cells[self.figure][key] = attrs["src"]
            elif attrs.get("class") == "fm-final-image":
                self.finals[self.figure].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None


def grid_of(path) -> Grid:
    parser = Grid()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def png_pixels(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def test_report_grid_has_one_map_per_layer_and_timestep(sampled, with_maps, tmp_path, monkeypatch):
    import diffsketch.analysis.report

    folder, loaded = with_maps
    # the CLI hands the model params over, and the model is loaded once (eager: `auto` does not compile for a few samplings)
    assert loaded == [ModelConfig(id="tiny", device="cpu", compile="off")]
    root = store.open_store(sampled)
    layers = root.attrs["unet_layers"]
    result = AnalysisResult.load(folder / "analysis")
    chosen = [int(t) for t in result.timesteps[result.selected]]
    shown = [int(i) for i in store.complete_mask(root).nonzero()[0][:SHOWN]]
    grid = grid_of(folder / "reports" / "index.html")
    assert sorted(grid.cells) == shown
    for trajectory in shown:
        cells = grid.cells[trajectory]
        assert set(cells) == {(spec["name"], t) for spec in layers for t in chosen}
        assert len(grid.finals[trajectory]) == 1
        np.testing.assert_array_equal(png_pixels(grid.finals[trajectory][0]), root["images"][trajectory])  # 128 px: as stored
        for spec in layers:
            for t in chosen:
                pixels = png_pixels(cells[(spec["name"], t)])
                assert pixels.shape == (spec["size"], spec["size"], 3)  # full resolution, not the store's 2 x 2
    # `diffsketch report` re-renders the same grid from the saved analysis, without the model
    monkeypatch.setattr(diffsketch.analysis.report, "_figures", lambda result: "")
    assert CliRunner().invoke(app, ["report", "--results", str(folder / "analysis"), "--reports", str(tmp_path)]).exit_code == 0
    again = grid_of(tmp_path / "index.html")
    assert again.cells == grid.cells and again.finals == grid.finals


def test_feature_maps_off_draws_none_and_loads_no_model(sampled, with_maps, tmp_path, monkeypatch):
    import diffsketch.diffusion.models
    import diffsketch.analysis.report

    monkeypatch.setattr(diffsketch.diffusion.models, "load_model", no_model)
    monkeypatch.setattr(diffsketch.analysis.report, "_figures", lambda result: "")
    shutil.copytree(with_maps[0] / "analysis", tmp_path / "analysis")  # an earlier analysis with maps, in the same folder
    cli_analyze(sampled, tmp_path, 0)
    page = tmp_path / "reports" / "index.html"
    assert grid_of(page).cells == {} and 'id="feature-maps"' not in page.read_text(encoding="utf-8")
    assert AnalysisResult.load(tmp_path / "analysis").feature_maps is None  # the earlier maps are not left behind


def test_store_that_cannot_be_resampled_is_refused_before_work(tmp_path, monkeypatch):
    import diffsketch.diffusion.models

    monkeypatch.setattr(diffsketch.diffusion.models, "load_model", no_model)
    path = synthetic_store(tmp_path / "s.zarr")  # no sampling settings in its attrs
    with pytest.raises(AnalysisInputError, match=r"lacks attrs\['steps'\].*analyze.feature_maps=0"):
        analyze(path, analysis_cfg(feature_maps=1, k=4, k_max=8, pca_dims=5), progress=False, model=ModelConfig(id="tiny"))
    with pytest.raises(AnalysisInputError, match="sampled with model 'tiny'.*'sd15-random'"):
        analyze(path, analysis_cfg(feature_maps=1), progress=False, model=ModelConfig(id="sd15-random"))
