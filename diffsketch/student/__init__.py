"""The `pairs` and `distill` stages: generated (image, sketch) pairs and the fast student trained on them.

In: ``core``, ``diffusion``, ``store`` and ``training`` (the generator and prior make the pairs;
the checkpoint helpers resume distillation). Out: the pairs store, the student network and its
safetensors files, :func:`~diffsketch.student.distill.run_distill`, and ONNX export.

Public names (imported on first use, so importing the package costs nothing):

- :mod:`~diffsketch.student.pairs`: ``PairsError``, ``open_pairs``, ``run_pairs``
- :mod:`~diffsketch.student.distill`: ``DistillError``, ``run_distill``
- :mod:`~diffsketch.student.network`: ``Student``, ``StudentConfig``, ``StudentLoadError``, ``load_student``, ``save_student``, ``smallest_side``
- :mod:`~diffsketch.student.onnx`: ``DEFAULT_OPSET``, ``ExportError``, ``ONNX_EXTRA``, ``TOLERANCE``, ``export_onnx``, ``onnx_export_available``, ``onnxruntime_available``, ``verify_onnx``
"""

from diffsketch.core import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    submodules=[],
    submod_attrs={
        "pairs": ["PairsError", "open_pairs", "run_pairs"],
        "distill": ["DistillError", "run_distill"],
        "network": ["Student", "StudentConfig", "StudentLoadError", "load_student", "save_student", "smallest_side"],
        "onnx": ["DEFAULT_OPSET", "ExportError", "ONNX_EXTRA", "TOLERANCE", "export_onnx", "onnx_export_available", "onnxruntime_available", "verify_onnx"],
    },
)
