"""Export the distilled student to ONNX, checked against PyTorch with ONNX Runtime.

The graph takes ``image``: float32 (batch, 3, height, width) RGB in [0, 1] and returns ``sketch``:
float32 (batch, 1, height, width) in [0, 1] (1 = paper), with batch, height and width dynamic.
Like the PyTorch model it reflect-pads each side up to a multiple of ``2 ** downsamples`` and
crops back, and like it needs each side to be at least
:func:`~diffsketch.student.network.smallest_side` pixels (9 for 3 downsamples).

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

from diffsketch.core import DiffsketchError
from diffsketch.student.network import Student, load_student, smallest_side

log = logging.getLogger(__name__)

ONNX_EXTRA = 'pip install -e ".[onnx]"'  # the install line of the optional ONNX packages (pyproject's onnx extra)
DEFAULT_OPSET = 18
MIN_OPSET = 18  # the dynamo exporter's lowest: its translations start at opset 18
TOLERANCE = 1e-4  # largest accepted |ONNX Runtime - PyTorch| on a sketch value in [0, 1]
INPUT_NAME, OUTPUT_NAME = "image", "sketch"


class ExportError(DiffsketchError, RuntimeError):
    """The student cannot be exported or checked: a missing package, a bad opset, a mismatch."""


def onnxruntime_available() -> bool:
    """True when ``onnxruntime`` can be imported (the default for ``check``)."""
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_export_available() -> bool:
    """True when the packages :func:`export_onnx` needs (``onnx``, ``onnxscript``) import; they come with the onnx extra."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _require(module: str, packages: str, purpose: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ExportError(
            f"{purpose} needs the {module} package ({err}); install the onnx extra with `{ONNX_EXTRA}` "
            f"(or `pip install {packages}`)"
        ) from None


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
