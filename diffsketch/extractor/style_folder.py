"""Style folders: a distilled student packed to share, with its ONNX graph, example thumbnails and a model card.

:func:`export_style` writes the folder that :class:`~diffsketch.extractor.api.SketchExtractor`,
``diffsketch extract --model`` and the web page (``diffsketch serve``) load. The model card's
evaluation section is passed in as Markdown (``diffsketch export --style`` reads it from the
evaluation's saved results), so this module does not depend on the evaluation stage.

The ONNX graph needs the optional ``onnx`` and ``onnxscript`` packages (the onnx extra). Without
them the folder is written complete without ``student.onnx`` (it loads with the PyTorch backend),
and one warning says which extra adds the graph.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from diffsketch.core import ImageError, load_params, read_rgb, replaced_folder
from diffsketch.student import DEFAULT_OPSET, ONNX_EXTRA, ExportError, export_onnx, load_student, onnx_export_available
from diffsketch.training import apply_style, is_style

log = logging.getLogger(__name__)

STYLE_MANIFEST = "style.json"
ONNX_FILE = "student.onnx"
EXAMPLE_PHOTO, EXAMPLE_SKETCH = "example.png", "example_sketch.png"
THUMBNAIL = 256  # long side (px) of the example thumbnails
NO_LICENCE = "not specified (ask the author before redistributing)"


def _thumbnail(image, target: Path) -> None:
    from PIL import Image

    if isinstance(image, torch.Tensor):  # (3 or 1, H, W) in [0, 1]
        array = np.rint(image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    image = image.copy()
    image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    image.save(target, format="PNG")


def _example_thumbnails(params, staging: Path) -> list[str]:
    """Thumbnails of the example pair into ``staging``; returns notes for the card about what is shown."""
    example, notes = params.example, []
    photo = None
    if example.image is not None:
        try:
            photo = read_rgb(example.image, param="example.image")
        except ImageError as err:
            raise ExportError(f"the example photo cannot go into the style folder: {err}") from None
        _thumbnail(photo, staging / EXAMPLE_PHOTO)
    else:
        notes.append("The example image was generated from the prompt and seed (not kept as a file), so it is not shown.")
    if not is_style(example.sketch):
        try:
            sketch = read_rgb(example.sketch, param="example.sketch")
        except ImageError as err:
            raise ExportError(f"the example drawing cannot go into the style folder: {err}") from None
        _thumbnail(sketch, staging / EXAMPLE_SKETCH)
    elif photo is not None:
        small = torch.nn.functional.interpolate(photo[None], scale_factor=min(1.0, 2 * THUMBNAIL / max(photo.shape[-2:])), mode="bilinear", antialias=True)[0]
        _thumbnail(apply_style(example.sketch, small.clamp(0, 1), example.style_weights)[0:1], staging / EXAMPLE_SKETCH)
        notes.append(f"The example sketch is the built-in `{example.sketch}` style applied to the example photo.")
    else:
        notes.append(f"The example sketch is the built-in `{example.sketch}` style applied to the generated image (not shown).")
    return notes


def _settings_table(section) -> str:
    rows = [f"| `{key}` | `{value}` |" for key, value in section.model_dump().items()]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def _model_card(name: str, params, meta: dict, evaluation: str, licence: str, notes: list[str], files: list[str], config) -> str:
    example = params.example
    shown = [f for f in (EXAMPLE_PHOTO, EXAMPLE_SKETCH) if f in files]
    pictures = " ".join(f"![{f}]({f})" for f in shown) or "(no example pictures: see the notes)"
    lines = [
        f"# diffsketch style: {name}",
        "",
        "A sketch style learnt by diffsketch from one example drawing with Stable Diffusion features, distilled into a small image-to-sketch network.",
        "",
        f"- **Licence**: {licence}",
        f"- **Teacher model** (Stable Diffusion features): `{params.model.id}`",
        f"- **Student**: Pix2PixHD global generator, width {config.width}, {config.downsamples} downsamplings, {config.blocks} residual blocks",
        f"- **diffsketch version**: {meta.get('version', 'unknown')}",
        "",
        "## Use it",
        "",
        "```python",
        "from diffsketch import SketchExtractor",
        "",
        f'extractor = SketchExtractor.load("{name}")  # this folder',
        'extractor("photo.jpg").save("photo_sketch.png")',
        "```",
        "",
        f"or `diffsketch extract photos/ --model {name} --out sketches/`, or `diffsketch serve --styles <folder holding {name}>`.",
        "",
        "Files: " + ", ".join(f"`{f}`" for f in files) + ". Weights are safetensors"
        + (" and an ONNX graph only (no pickle)." if ONNX_FILE in files else
           f" only (no pickle); no ONNX graph was exported (add it with `{ONNX_EXTRA}` and export again)."),
        "",
        "## The example",
        "",
        pictures,
        "",
        f"- prompt: `{example.prompt}`, seed {example.seed}",
        f"- image: `{example.image}`" if example.image else "- image: generated from the prompt and seed",
        f"- sketch: `{example.sketch}`",
        *(f"- {n}" for n in notes),
        "",
        "## Training (the sketch generator)",
        "",
        _settings_table(params.train),
        "",
        "Loss weights:",
        "",
        _settings_table(params.losses),
        "",
        "## Distillation (the student)",
        "",
        _settings_table(params.distill),
        "",
    ]
    if meta:
        holdout = meta.get("holdout") or {}
        lines += [
            f"Trained on {meta.get('pairs', '?')} generated pairs at {meta.get('resolution', '?')} px for "
            f"{meta.get('iterations', '?')} iterations; held-out L1 "
            + (f"{holdout['l1']:.4f} (blank output {holdout.get('blank_l1', float('nan')):.4f})" if "l1" in holdout else "not recorded"),
            "",
        ]
    lines += ["## Evaluation", "", evaluation, ""]
    return "\n".join(lines)


def export_style(
    model_path: str | Path,
    folder: str | Path,
    params_path: str | Path = "params.yaml",
    evaluation: str | None = None,
    licence: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool | None = None,
    onnx: bool | None = None,
) -> Path:
    """Write a shareable style folder: the student, its config, its ONNX graph, example thumbnails, a model card.

    Files: ``student.safetensors`` + ``student.json`` (copied), ``student.onnx`` (:func:`export_onnx`,
    checked with ONNX Runtime when installed; ``onnx``: True = required, False = left out, None =
    when the onnx extra is installed, else left out with a warning naming the extra),
    ``example.png`` / ``example_sketch.png``, ``README.md``
    (teacher model, example, training and distillation settings, ``evaluation``: the Markdown
    of the evaluation's results, or why there are none, the licence) and ``style.json`` (name, licence, files). The folder is
    written beside its target and swapped in whole; an existing folder is replaced only if it is a
    style folder.

    Raises:
        ExportError, StudentLoadError, ParamsError: with a message naming the problem.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / STYLE_MANIFEST).is_file())):
        raise ExportError(f"{folder} exists and is not a style folder written by `diffsketch export --style`; choose another name or empty it")
    if not folder.name or folder.name.startswith("."):
        raise ExportError(f"{folder}: a style folder's name must not be empty or start with a dot")
    model, meta = load_student(model_path, "cpu")
    if onnx is None:
        onnx = onnx_export_available()
        if not onnx:
            log.warning(
                "ONNX export needs the onnx extra (%s): the style folder %s is written without %s; it loads with "
                "the PyTorch backend", ONNX_EXTRA, folder, ONNX_FILE,
            )  # fmt: skip
    if not Path(params_path).is_file():
        raise ExportError(f"{params_path} not found: the model card needs the params the style was trained with (--params)")
    params = load_params(params_path)
    evaluation = evaluation or "Not evaluated."
    licence = (licence or "").strip() or NO_LICENCE
    model_path = Path(model_path)
    with replaced_folder(folder) as staging:
        shutil.copyfile(model_path, staging / "student.safetensors")
        shutil.copyfile(model_path.with_suffix(".json"), staging / "student.json")
        if onnx:
            export_onnx(staging / "student.safetensors", staging / ONNX_FILE, opset=opset, check=check)
        notes = _example_thumbnails(params, staging)
        files = sorted(p.name for p in staging.iterdir()) + [STYLE_MANIFEST, "README.md"]
        files = sorted(set(files))
        card = _model_card(folder.name, params, meta, evaluation, licence, notes, files, model.config)
        (staging / "README.md").write_text(card, encoding="utf-8")
        student = {"width": model.config.width, "downsamples": model.config.downsamples, "blocks": model.config.blocks}
        manifest = {"name": folder.name, "licence": licence, "teacher": params.model.id, "example_prompt": params.example.prompt,
                    "student": student, "files": files, "version": meta.get("version")}  # fmt: skip
        (staging / STYLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
