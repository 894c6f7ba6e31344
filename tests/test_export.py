"""`diffsketch export`: ONNX export of a tiny random student, run with ONNX Runtime against PyTorch."""

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.student.network import Student, StudentConfig, load_student, save_student
from diffsketch.student.onnx import ExportError, export_onnx, verify_onnx

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


def test_style_folder_without_the_onnx_extra(student, tmp_path, monkeypatch, caplog):
    """The base install (no onnx, onnxscript, onnxruntime): ``export --style`` writes a complete folder without
    student.onnx, one warning names the extra that adds it, and the folder sketches as the student itself does."""
    import json
    import logging

    from conftest import REPO

    from diffsketch import SketchExtractor
    from diffsketch.extractor.style_folder import export_style

    monkeypatch.chdir(REPO)  # params.yaml names the example files relative to the project
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing them fails
    folder = tmp_path / "styles" / "cat"
    with caplog.at_level(logging.WARNING):
        result = runner.invoke(app, ["export", "-m", str(student), "--style", str(folder)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "No module named" not in result.output
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "example.png", "example_sketch.png", "student.json", "student.safetensors", "style.json"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "onnx" in r.getMessage()]
    assert len(warnings) == 1 and 'pip install -e ".[onnx]"' in warnings[0] and "without student.onnx" in warnings[0]
    assert "student.onnx" not in json.loads((folder / "style.json").read_text())["files"]
    assert 'no ONNX graph was exported (add it with `pip install -e ".[onnx]"`' in (folder / "README.md").read_text()

    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    model, _ = load_student(student)
    with torch.inference_mode():
        expected = model(image)[0, 0].numpy()
    got = SketchExtractor.load(folder, "cpu", precision="fp32").sketch_tensors([image[0]])[0]
    assert np.abs(got - expected).max() <= 1e-5  # the folder's student, on the PyTorch backend

    with pytest.raises(ExportError, match=r'onnx extra with `pip install -e "\.\[onnx\]"`'):  # asked for explicitly: an error
        export_style(student, tmp_path / "styles" / "dog", REPO / "params.yaml", onnx=True)
