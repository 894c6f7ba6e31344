"""The `evaluate` stage: the distilled student against baselines on real photos.

The paper's protocol (``method.md`` section 7): the ground truth of each test photo is the
style's own extractor run on it (``evaluate.ground_truth``; with ``xdog``, the authors' XDoG), and
every method is scored against it. Methods are the student and the baselines of
:mod:`diffsketch.evaluation.baselines`; the ground truth's own extractor is left out (it would score
perfectly). Given the trained generator too (``--generator``), it is scored directly as the method
``generator``: each photo inverted into the diffusion model and regenerated, its features through
the generator (two denoising loops per photo; the ablations compare it with the student). Metrics
are those of :mod:`diffsketch.evaluation.metrics`, per image and averaged. Chamfer and F-score are
undefined for a sketch without line pixels (their values are sentinels): each per-image row says
whether the sketch had any (``lines``), and the means of those two leave such sketches out (None
when a method drew no lines at all: "no lines" in the report, never ranked).

Everything that can be wrong with the inputs (a missing folder, no images, missing weights, a
missing student, LPIPS required without its weights) is checked by :func:`plan` before any image
is processed. Unreadable or too-small images are skipped, listed in the report and logged.

Outputs (``out_dir``, replaced as a whole when the run succeeds):

- ``metrics.json``: mean of each metric per method, plus the image count (``dvc metrics``);
- ``comparison.json``: one row per method, for the ``dvc plots`` bar charts;
- ``per_image.csv``: every (image, method) score, and ``lines`` (1 when the sketch has line pixels);
- ``summary.json``: the settings, notes and timings the report and the README's results use;
- ``grid/NN-IMAGE/{photo,truth,METHOD}.png``: the report's side-by-side grid as files;
- ``index.html``: the self-contained report, rendered by :mod:`diffsketch.evaluation.report`, which imports
  this module (never the reverse); ``eval_report.run_evaluate`` runs both.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffsketch.core import NETWORK_STYLES, DatasetConfig, DiffsketchError, ImageError, Params, replaced_folder
from diffsketch.evaluation import baselines, metrics
from diffsketch.extractor import IMAGE_EXTENSIONS, prepare_image
from diffsketch.training import STYLES, apply_style

log = logging.getLogger(__name__)

MIN_SIDE = 11  # the SSIM window is 11 x 11
THUMBNAIL = 160  # long side (px) of the images kept for the report's grid
GRID_DIR = "grid"  # the grid's images as files, one folder per photo


class EvalError(DiffsketchError, ValueError):
    """The evaluation cannot run with these params or files; the message names the problem and the fix."""


@dataclass(frozen=True)
class TestImage:
    dataset: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.path.name}"


@dataclass
class Plan:
    """What an evaluation will do, checked before any image is read."""

    images: list[TestImage]
    ground_truth: str
    truth_fn: Callable[[torch.Tensor], torch.Tensor]
    methods: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    notes: list[str] = field(default_factory=list)
    lpips_net: torch.nn.Module | None = None
    min_side: int = MIN_SIDE
    student_meta: dict = field(default_factory=dict)


def _ground_truth(params: Params) -> tuple[str, str | None]:
    """The ground-truth style and, for a network style, the weights file that runs it."""
    cfg, example = params.evaluate, params.example
    style = cfg.ground_truth
    if style == "auto":
        if example.sketch not in STYLES:
            raise EvalError(
                f"evaluate.ground_truth is auto, but example.sketch is a drawing file ({example.sketch}), which has no "
                f"extractor to draw the test photos with; set evaluate.ground_truth to the built-in style closest to your "
                f"drawing ({', '.join(STYLES)})"
            )
        style = example.sketch
    weights = None
    if style in NETWORK_STYLES:
        weights = cfg.weights.get(style) or (example.style_weights if example.sketch == style else None)
        if weights is None:
            raise EvalError(f"the ground truth style {style} needs its network's weights: set evaluate.weights.{style}")
    return style, weights


def _check_weights(name: str, path: str) -> None:
    if not Path(path).expanduser().is_file():
        raise EvalError(f"evaluate.weights.{name}={path} is not a file; point it at the {name} checkpoint or drop {name}")


def dataset_name(dataset: DatasetConfig) -> str:
    """The dataset's label in the report: its ``name``, else its folder's name."""
    return dataset.name or Path(dataset.path).expanduser().resolve().name


def list_images(dataset: DatasetConfig) -> list[TestImage]:
    """The dataset's image files (sorted by name, hidden files skipped), at most ``limit`` of them."""
    folder = Path(dataset.path).expanduser()
    if not folder.is_dir():
        hint = " (run `dvc repro eval-data` or `diffsketch eval-data` to create it)" if folder == Path("data/eval") else ""
        raise EvalError(f"evaluate.datasets: {dataset.path} is not a folder{hint}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise EvalError(f"evaluate.datasets: {dataset.path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [TestImage(dataset_name(dataset), p) for p in files[: dataset.limit]]


def _student_method(student_path: str | Path, device: torch.device):
    """The student through the extractor API (the path ``extract`` and the web page use), in fp32 for reproducible scores."""
    from diffsketch.extractor import SketchExtractor

    extractor = SketchExtractor.load(student_path, device.type, "torch", precision="fp32", batch_size=1)

    def run(image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(extractor.sketch_tensors([image])[0])[None]

    return run, extractor.meta, extractor.min_side


GENERATOR_PROMPT = "a photo"  # the prompt a test photo is inverted and regenerated with, for the generator


def _generator_method(generator_path: str | Path, params: Params, device: torch.device):
    """The trained generator scored directly: the photo, squared to the generator's resolution, DDIM-inverted with
    :data:`GENERATOR_PROMPT` at guidance 1 and regenerated (as the example photo is in training), its features through
    the generator, the sketch resized back to the photo's shape. Costs two denoising loops per photo."""
    import torch.nn.functional as F

    from diffsketch.diffusion import (
        Capture,
        check_model_reachable,
        encode_image,
        encode_prompts,
        invert,
        load_model,
        sample_conditions,
        unet_layers,
        vae_layers,
    )
    from diffsketch.training import inputs_from_result, load_generator

    generator, meta = load_generator(Path(generator_path))
    if meta.get("model") != params.model.id:
        raise EvalError(f"the generator {generator_path} was trained with model {meta.get('model')!r} but params say model.id="
                        f"{params.model.id!r}; rerun `dvc repro` or drop --generator")  # fmt: skip
    check_model_reachable(params.model)
    model = load_model(params.model.model_copy(update={"device": device.type if params.model.device == "auto" else params.model.device}))
    generator = generator.to(model.device).eval()
    size, steps, indices = int(meta["resolution"]), int(meta["steps"]), [int(i) for i in meta["ddim_indices"]]
    unet_specs = unet_layers(model.unet.config, size, model.vae_scale_factor, meta.get("capture", "residual"))
    vae_specs = vae_layers(model.vae.config, size)
    cond = encode_prompts(model, [GENERATOR_PROMPT])

    @torch.no_grad()
    def run(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        square = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        noise = invert(model, encode_image(model, square), [GENERATOR_PROMPT], steps=steps, guidance=1.0, progress=False)
        capture = Capture(unet=unet_specs, vae=vae_specs, halves="both", keep=indices, on_cpu=False)
        result = sample_conditions(model, cond, noise, steps=steps, guidance=1.0, eta=0.0, capture=capture,
                                   decode=meta.get("decode", "latent"), progress=False)  # fmt: skip
        sketch = generator(inputs_from_result(result, model.device)).float().cpu()
        return F.interpolate(sketch, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)

    return run


def _lpips(setting: str, notes: list[str]) -> torch.nn.Module | None:
    from diffsketch.training import ALEXNET_FILE, alexnet_cached, load_lpips

    if setting == "off":
        notes.append("LPIPS not computed (evaluate.lpips is off).")
        return None
    if alexnet_cached() is None:
        where = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
        if setting == "on":
            raise EvalError(
                f"evaluate.lpips is on, but torchvision's AlexNet weights are not at {where}; download them once where the "
                "internet is reachable (torchvision.models.alexnet(weights='DEFAULT')) and copy the file there, or set evaluate.lpips=auto"
            )
        notes.append(f"LPIPS skipped: its AlexNet backbone weights are not at {where} (a random backbone would give meaningless values).")
        return None
    return load_lpips("alex")


def plan(params: Params, student_path: str | Path | None, generator_path: str | Path | None = None) -> Plan:
    """Check every input of the evaluation and set up its methods, before any image is processed.

    With ``generator_path``, the trained generator is scored too, as the method ``generator`` (first).

    Raises:
        EvalError, StudentLoadError, ImageError: with a message naming the problem and the fix.
    """
    from diffsketch.diffusion import model_device

    cfg = params.evaluate
    images = [image for dataset in cfg.datasets for image in list_images(dataset)]
    names = [dataset_name(d) for d in cfg.datasets]
    if len(set(names)) < len(names):
        raise EvalError(f"evaluate.datasets: two datasets are both named {names}; give them distinct `name`s")
    style, truth_weights = _ground_truth(params)
    if truth_weights is not None:
        _check_weights(style, truth_weights)
    for name, path in cfg.weights.items():
        if name in cfg.methods:
            _check_weights(name, path)

    notes, methods, min_side, meta = [], {}, MIN_SIDE, {}
    if generator_path is not None:
        methods["generator"] = _generator_method(generator_path, params, model_device(params.model.device))
    for name in cfg.methods:
        if name == style:
            notes.append(f"{name} left out: it is the ground truth's own extractor.")
        elif name == "student":
            if student_path is None:
                raise EvalError("evaluate.methods lists student, but no student model was given (--student)")
            methods[name], meta, side = _student_method(student_path, model_device(params.model.device))
            min_side = max(min_side, side)
        else:
            methods[name] = baselines.baseline(name, cfg.weights)
    if not methods:
        raise EvalError(f"evaluate.methods has nothing to compare once the ground truth's extractor ({style}) is left out")

    def truth_fn(image: torch.Tensor) -> torch.Tensor:
        param = f"evaluate.weights.{style}" if style in cfg.weights else "example.style_weights"
        return apply_style(style, image, truth_weights, param=param)

    lpips_net = _lpips(cfg.lpips, notes)
    return Plan(images, style, truth_fn, methods, notes, lpips_net, min_side, meta)


def _thumbnail(array: np.ndarray) -> np.ndarray:
    """A uint8 copy of an (H, W) or (H, W, 3) image in [0, 1], its long side at most THUMBNAIL."""
    from PIL import Image

    image = Image.fromarray(np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8))
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    return np.asarray(image)


@dataclass
class EvalResult:
    """Per-image scores, their means per method, and what the report shows."""

    rows: list[dict]
    means: dict[str, dict[str, float]]
    summary: dict
    grid: list[dict]

    def metrics_json(self) -> dict:
        return {"images": self.summary["images"], **self.means}

    def comparison(self) -> list[dict]:
        return [{"method": method, **values} for method, values in self.means.items()]


EDGE_METRICS = ("chamfer", "f_score")  # undefined for a sketch without line pixels


def _means(rows: list[dict], methods: list[str]) -> dict[str, dict[str, float | None]]:
    """Each method's mean per metric; chamfer and F-score over the sketches with line pixels only (None when it drew none)."""
    out = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        keys = [k for k in metrics.HIGHER_IS_BETTER if mine and k in mine[0]]
        values = {k: [r[k] for r in mine if k not in EDGE_METRICS or r.get("lines", 1)] for k in keys}
        out[method] = {k: float(np.mean(v)) if v else None for k, v in values.items()}
    return out


def evaluate(params: Params, student_path: str | Path | None, progress: bool = True, generator_path: str | Path | None = None) -> EvalResult:
    """Score every method on every test image (see the module docstring); with ``generator_path``, the generator too."""
    from tqdm.auto import tqdm

    cfg = params.evaluate
    p = plan(params, student_path, generator_path)
    rows, grid, skipped = [], [], []
    seconds = {name: 0.0 for name in p.methods}
    for image_ref in tqdm(p.images, desc="evaluate", unit="image", disable=not progress):
        try:
            image = prepare_image(image_ref.path, cfg.size, p.min_side, size_param="evaluate.size")
        except ImageError as err:
            log.warning("skipping %s", err)
            skipped.append(str(err))
            continue
        truth = p.truth_fn(image)[0].cpu().numpy()
        outputs = {}
        for name, fn in p.methods.items():
            start = time.perf_counter()
            outputs[name] = fn(image)[0].cpu().numpy()
            seconds[name] += time.perf_counter() - start
            scores = metrics.score(truth, outputs[name], threshold=cfg.line_threshold, tolerance=cfg.tolerance, lpips_net=p.lpips_net)
            lines = int(metrics.line_mask(outputs[name], cfg.line_threshold).any())  # 0: chamfer and F-score are sentinels
            rows.append(dict(dataset=image_ref.dataset, image=image_ref.name, method=name, **scores, lines=lines))
        if len(grid) < cfg.grid:
            photo = image.permute(1, 2, 0).cpu().numpy()
            grid.append(dict(image=image_ref.name, photo=_thumbnail(photo), truth=_thumbnail(truth),
                             outputs={k: _thumbnail(v) for k, v in outputs.items()}))  # fmt: skip
    done = len({r["image"] for r in rows})
    if done == 0:
        raise EvalError("no test image could be evaluated:\n  " + "\n  ".join(skipped))
    means = _means(rows, list(p.methods))
    datasets = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        datasets[dataset] = dict(images=len({r["image"] for r in rows if r["dataset"] == dataset}),
                                 means=_means([r for r in rows if r["dataset"] == dataset], list(p.methods)))  # fmt: skip
    summary = dict(
        images=done, ground_truth=p.ground_truth, size=cfg.size, line_threshold=cfg.line_threshold, tolerance=cfg.tolerance,
        lpips=p.lpips_net is not None, methods=list(p.methods), notes=p.notes, skipped=skipped, datasets=datasets,
        seconds_per_image={k: v / done for k, v in seconds.items()}, student=p.student_meta, model=params.model.id,
    )  # fmt: skip
    return EvalResult(rows, means, summary, grid)


def write_outputs(result: EvalResult, out_dir: str | Path, pages: dict[str, str] | None = None) -> Path:
    """Write the metrics, plots data, per-image table and summary, plus ``pages`` (file name -> text).

    This module computes and never renders: the HTML page comes from :mod:`diffsketch.evaluation.report`
    (``eval_report.write_report`` / ``eval_report.run_evaluate`` pass it in as ``pages``), so the
    renderer imports the results and not the other way round. Returns ``out_dir / "index.html"``.
    """
    out_dir = Path(out_dir)
    with replaced_folder(out_dir) as staging:
        (staging / "metrics.json").write_text(json.dumps(result.metrics_json(), indent=2) + "\n")
        (staging / "comparison.json").write_text(json.dumps(result.comparison(), indent=2) + "\n")
        (staging / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str) + "\n")
        columns = ["dataset", "image", "method", *[k for k in metrics.HIGHER_IS_BETTER if k in result.rows[0]], "lines"]
        with open(staging / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(result.rows)
        write_grid(result.grid, staging / GRID_DIR)
        for name, text in (pages or {}).items():
            (staging / name).write_text(text)
    return out_dir / "index.html"


def write_grid(grid: list[dict], folder: Path) -> None:
    """The report's grid as PNG files, ``NN-image/{photo,truth,METHOD}.png`` (the ablation report reads them)."""
    from PIL import Image

    for index, entry in enumerate(grid):
        cell = folder / f"{index:02d}-{Path(entry['image']).stem}"
        cell.mkdir(parents=True)
        for name, array in {"photo": entry["photo"], "truth": entry["truth"], **entry["outputs"]}.items():
            Image.fromarray(array).save(cell / f"{name}.png")
