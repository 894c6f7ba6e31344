"""Which torch device a setting names: one rule for the model, the analysis and the extractor."""

from __future__ import annotations

import torch


def resolve_device(name: str, setting: str, error: type[Exception] = ValueError, sep: str = "=") -> torch.device:
    """``auto`` = the GPU when one is visible, else the CPU; otherwise the named device. A CUDA
    device without a visible GPU raises ``error``, naming ``setting`` (e.g. ``model.device``) and the fix."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(
            f"{setting}{sep}{name} was asked for but no CUDA GPU is visible (CUDA is not available here); "
            f"use {setting}{sep}cpu or {setting}{sep}auto"
        )
    return device
