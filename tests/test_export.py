"""`diffsketch export`: ONNX export of a tiny random student, run with ONNX Runtime against PyTorch."""

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.student.onnx import ExportError, export_onnx, verify_onnx
from diffsketch.student.network import Student, StudentConfig, load_student, save_student

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    """The student exported once through the CLI (with the check): (onnx path, command output)."""
    out = tmp_path_factory.mktemp("onnx") / "models" / "student.onnx"
    result = runner.invoke(app, ["export", "--model", str(student), "--out", str(out), "--check"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_cli_exports_and_checks(exported):
    path, output = exported
    assert path.is_file() and f"wrote {path}" in output
    assert "max abs diff" in output and "matches PyTorch" in output
    assert [p.name for p in path.parent.iterdir()] == ["student.onnx"]  # one file, no temporaries or external data


@pytest.mark.parametrize("shape", [(1, 70, 45), (2, 64, 48), (3, 33, 97)])
def test_onnx_runtime_matches_pytorch_at_any_size(student, exported, shape):
    """Dynamic batch, height and width, including sizes that are not multiples of 4 (padded inside)."""
    batch, height, width = shape
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["sketch"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", 1, "height", "width"]
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
    model, _ = load_student(student)
    with torch.inference_mode():
        expected = model(images).numpy()
    (got,) = session.run(None, {"image": images.numpy()})
    assert got.shape == (batch, 1, height, width)
    assert np.abs(got - expected).max() <= 1e-4
    assert expected.std() > 1e-3  # a real comparison, not two constant images


def test_verify_catches_a_mismatch(exported, tmp_path):
    torch.manual_seed(1)
    other = save_student(Student(StudentConfig(width=8, downsamples=2, blocks=1)), tmp_path / "other.safetensors")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        verify_onnx(exported[0], other)


def test_clear_errors(student, tmp_path, monkeypatch):
    out = tmp_path / "s.onnx"
    result = runner.invoke(app, ["export", "--model", str(tmp_path / "none.safetensors"), "--out", str(out)])
    assert result.exit_code == 1 and "none.safetensors" in result.output and "dvc repro distill" in result.output
    result = runner.invoke(app, ["export", "--model", str(student), "--out", str(out), "--opset", "13"])
    assert result.exit_code == 1 and "opset" in result.output
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ExportError, match="pip install onnx onnxscript"):
        export_onnx(student, out)
    result = runner.invoke(app, ["export", "--model", str(student), "--out", str(out)])
    assert result.exit_code == 1 and "pip install onnx onnxscript" in result.output and "Traceback" not in result.output
    assert not out.exists()
