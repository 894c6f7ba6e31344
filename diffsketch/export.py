"""Export the distilled student to ONNX (checked against PyTorch with ONNX Runtime), or as a style folder.

:func:`export_style` writes a shareable style folder (weights, config, ONNX graph, example
thumbnails, model card) that :class:`~diffsketch.extractor.SketchExtractor` and the web page load.

The graph takes ``image``: float32 (batch, 3, height, width) RGB in [0, 1] and returns ``sketch``:
float32 (batch, 1, height, width) in [0, 1] (1 = paper), with batch, height and width dynamic.
Like the PyTorch model it reflect-pads each side up to a multiple of ``2 ** downsamples`` and
crops back, and like it needs each side to be at least
:func:`~diffsketch.extract.smallest_side` pixels (9 for 3 downsamples).

Which exporter, and why: ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based
exporter, the default since PyTorch 2.9. The legacy TorchScript exporter (``dynamo=False``) still
works in torch 2.14 and is faster (under a second, against several seconds), and both give the
same graph for the student; but the legacy one warns that it is deprecated and will be removed.
The dynamo exporter needs the ``onnx`` and ``onnxscript`` packages, and opset 18 or newer (its
translations have no conversion to older opsets; ONNX Runtime 1.14 and later run opset 18).

Dynamic sizes: the student decides in Python whether to pad (``if pad_h or pad_w``), and either
exporter records the branch its example input takes (torch.onnx runs ``torch.export`` with
size-oblivious shape reasoning, so it does not pin the sizes to that branch). The example is
therefore given sides that need padding, so the padding is in the graph, with amounts computed
from the input's shape (zero for a multiple); and a batch of 2, because a size of 1 would be
taken as a constant. :func:`verify_onnx`, run by default, checks sizes that need padding and
sizes that do not, at other batch sizes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

from diffsketch.extractor import smallest_side
from diffsketch.student import Student, load_student

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's lowest: its translations start at opset 18
TOLERANCE = 1e-4  # largest accepted |ONNX Runtime - PyTorch| on a sketch value in [0, 1]
INPUT_NAME, OUTPUT_NAME = "image", "sketch"


class ExportError(RuntimeError):
    """The student cannot be exported or checked: a missing package, a bad opset, a mismatch."""


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` can be imported (the default for ``check``)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _require(module: str, packages: str, purpose: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ExportError(f"{purpose} needs the {module} package ({err}); install it with `pip install {packages}`") from None


def _example_input(model: Student) -> torch.Tensor:
    """A random batch of 2 whose sides are not multiples of ``2 ** downsamples`` (see the module docstring)."""
    m = model.config.multiple
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 2 * m + 3, 3 * m + 1, generator=generator)


def _name_output_dims(proto) -> None:
    """Name the output's dynamic dims like the input's (the exporter writes symbolic formulas)."""
    input_dims = proto.graph.input[0].type.tensor_type.shape.dim
    output_dims = proto.graph.output[0].type.tensor_type.shape.dim
    for axis in (0, 2, 3):
        output_dims[axis].dim_param = input_dims[axis].dim_param


def export_onnx(
    model_path: str | Path,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    check: bool | None = None,
) -> Path:
    """Export the student at ``model_path`` to the ONNX file ``out`` (one self-contained file).

    Args:
        model_path: the student's safetensors file (its ``.json`` config beside it).
        out: the ONNX file to write (written to a temporary file first, then renamed).
        opset: the ONNX opset, at least 18.
        check: run :func:`verify_onnx` on the result; None: when onnxruntime is installed.

    Returns:
        ``out`` as a Path.

    Raises:
        StudentLoadError: a missing or unreadable model.
        ExportError: a missing package, an opset below 18, or an export that does not match PyTorch.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: the exporter writes opset {MIN_OPSET} or newer")
    _require("onnx", "onnx onnxscript", "ONNX export")
    _require("onnxscript", "onnx onnxscript", "ONNX export")
    if check is None:
        check = onnxruntime_available()
    elif check:
        _require("onnxruntime", "onnxruntime", "checking the export")
    import onnx
    from torch.export import Dim

    model, _ = load_student(model_path, "cpu")
    min_side = smallest_side(model.config)
    dims = {0: Dim("batch"), 2: Dim("height", min=min_side), 3: Dim("width", min=min_side)}
    program = torch.onnx.export(
        model,
        (_example_input(model),),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes={"images": dims},
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    _name_output_dims(proto)
    proto.doc_string = f"diffsketch student {model.config}: image (N, 3, H, W) RGB in [0, 1] -> sketch (N, 1, H, W), 1 = paper"

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if check:
        diff = verify_onnx(out, model)
        log.info("ONNX Runtime matches PyTorch: max abs diff %.2e (tolerance %.0e)", diff, TOLERANCE)
    return out


def verify_onnx(
    onnx_path: str | Path,
    model: Student | str | Path,
    shapes: tuple[tuple[int, int, int], ...] | None = None,
    tolerance: float = TOLERANCE,
) -> float:
    """Run the ONNX file with ONNX Runtime (CPU) on random inputs and compare with PyTorch.

    Args:
        onnx_path: the exported file.
        model: the student (or its safetensors path) it was exported from.
        shapes: (batch, height, width) to try; default: a batch of 1 whose sides need padding and a
            batch of 3 whose sides do not (both unlike the export's example input).
        tolerance: largest accepted absolute difference.

    Returns:
        The largest absolute difference over all shapes.

    Raises:
        ExportError: onnxruntime is missing, or the difference exceeds ``tolerance``.
    """
    _require("onnxruntime", "onnxruntime", "checking the export")
    import onnxruntime

    if not isinstance(model, Student):
        model, _ = load_student(model, "cpu")
    model = model.to("cpu").eval()
    m = model.config.multiple
    if shapes is None:
        shapes = ((1, 5 * m + 3, 4 * m + 1), (3, 4 * m, 6 * m))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch, height, width in shapes:
        images = torch.rand(batch, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(images).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if got.shape != expected.shape:
            raise ExportError(f"{onnx_path}: ONNX Runtime gave shape {got.shape} for input {tuple(images.shape)}, PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"{onnx_path}: ONNX Runtime differs from PyTorch by up to {diff:.2e} (tolerance {tolerance:.0e}) "
                f"on a {batch}x3x{height}x{width} input; the export is not usable"
            )
        worst = max(worst, diff)
    return worst


# --------------------------------------------------------------------------------------------
# Style folders
# --------------------------------------------------------------------------------------------

STYLE_MANIFEST = "style.json"
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
    from diffsketch.example import is_style
    from diffsketch.styles import StyleError, apply_style, read_rgb

    example, notes = params.example, []
    photo = None
    if example.image is not None:
        try:
            photo = read_rgb(example.image, param="example.image")
        except StyleError as err:
            raise ExportError(f"the example photo cannot go into the style folder: {err}") from None
        _thumbnail(photo, staging / EXAMPLE_PHOTO)
    else:
        notes.append("The example image was generated from the prompt and seed (not kept as a file), so it is not shown.")
    if not is_style(example.sketch):
        try:
            sketch = read_rgb(example.sketch, param="example.sketch")
        except StyleError as err:
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
        "Files: " + ", ".join(f"`{f}`" for f in files) + ". Weights are safetensors and an ONNX graph only (no pickle).",
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
    reports: str | Path = "reports/eval",
    licence: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool | None = None,
) -> Path:
    """Write a shareable style folder: the student, its config, its ONNX graph, example thumbnails, a model card.

    Files: ``student.safetensors`` + ``student.json`` (copied), ``student.onnx`` (:func:`export_onnx`,
    checked with ONNX Runtime when installed), ``example.png`` / ``example_sketch.png``, ``README.md``
    (teacher model, example, training and distillation settings, the evaluation table of
    ``reports`` when it exists, the licence) and ``style.json`` (name, licence, files). The folder is
    written beside its target and swapped in whole; an existing folder is replaced only if it is a
    style folder.

    Raises:
        ExportError, StudentLoadError, ParamsError: with a message naming the problem.
    """
    import json
    import shutil

    from diffsketch.config import load_params
    from diffsketch.files import replaced_folder
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / STYLE_MANIFEST).is_file())):
        raise ExportError(f"{folder} exists and is not a style folder written by `diffsketch export --style`; choose another name or empty it")
    if not folder.name or folder.name.startswith("."):
        raise ExportError(f"{folder}: a style folder's name must not be empty or start with a dot")
    model, meta = load_student(model_path, "cpu")
    if not Path(params_path).is_file():
        raise ExportError(f"{params_path} not found: the model card needs the params the style was trained with (--params)")
    params = load_params(params_path)
    try:
        from diffsketch.eval_report import saved_results

        evaluation = saved_results(reports)
    except Exception as err:  # noqa: BLE001 - EvalError, or a malformed saved report
        evaluation = f"Not evaluated: {err}."
    licence = (licence or "").strip() or NO_LICENCE
    model_path = Path(model_path)
    with replaced_folder(folder) as staging:
        shutil.copyfile(model_path, staging / "student.safetensors")
        shutil.copyfile(model_path.with_suffix(".json"), staging / "student.json")
        export_onnx(staging / "student.safetensors", staging / "student.onnx", opset=opset, check=check)
        notes = _example_thumbnails(params, staging)
        files = sorted(p.name for p in staging.iterdir()) + [STYLE_MANIFEST, "README.md"]
        files = sorted(set(files))
        card = _model_card(folder.name, params, meta, evaluation, licence, notes, files, model.config)
        (staging / "README.md").write_text(card, encoding="utf-8")
        manifest = dict(name=folder.name, licence=licence, teacher=params.model.id, example_prompt=params.example.prompt,
                        student=dict(width=model.config.width, downsamples=model.config.downsamples, blocks=model.config.blocks),
                        files=files, version=meta.get("version"))  # fmt: skip
        (staging / STYLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder
