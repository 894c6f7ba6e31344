"""The distilled image-to-sketch network ("student"): fast, fully convolutional, any input size.

A Pix2PixHD *global generator* (Wang et al. 2018), the family the DiffSketch paper distils into,
sized for CPUs: a 7x7 stem, ``downsamples`` stride-2 convolutions doubling the width, ``blocks``
residual blocks at the lowest resolution, mirrored transposed convolutions back up, and a 7x7 head
to one channel. Instance normalisation and ReLU as in Pix2PixHD; the head ends in a sigmoid, so
sketches are in [0, 1] (1 = paper) like the teacher's. Inputs are RGB in [0, 1] of any size: they
are reflect-padded up to a multiple of ``2 ** downsamples`` and the output is cropped back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.core import DiffsketchError


class StudentLoadError(DiffsketchError, RuntimeError):
    """A student model file is missing, unreadable or does not match its config."""


@dataclass(frozen=True)
class StudentConfig:
    width: int = 32  # channels after the stem; doubled by every downsampling
    downsamples: int = 3
    blocks: int = 4  # residual blocks at the lowest resolution

    @property
    def multiple(self) -> int:
        return 2**self.downsamples


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Student(nn.Module):
    def __init__(self, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.config = config
        w = config.width
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, w, 7), _norm(w), nn.ReLU(inplace=True)]
        for i in range(config.downsamples):
            c = w * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(inplace=True)]
        deep = w * 2**config.downsamples
        layers += [ResidualBlock(deep) for _ in range(config.blocks)]
        for i in reversed(range(config.downsamples)):
            c = w * 2 ** (i + 1)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(c // 2), nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, 1, 7)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) sketch in [0, 1]."""
        h, w = images.shape[-2:]
        m = self.config.multiple
        pad_h, pad_w = -h % m, -w % m
        x = images * 2 - 1
        if pad_h or pad_w:
            # reflect needs the pad smaller than the side; replicate covers tiny inputs
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        return torch.sigmoid(self.net(x))[..., :h, :w]


def save_student(model: Student, path: str | Path, meta: dict | None = None) -> Path:
    """Weights to ``path`` (safetensors) and the config + ``meta`` to ``path.with_suffix('.json')``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(dict(config=asdict(model.config), meta=meta or {}), indent=2))
    return path


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[Student, dict]:
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path.with_suffix(".json")
    for needed in (path, config_path):
        if not needed.is_file():
            raise StudentLoadError(
                f"student model file {needed} not found; run the distill stage (`dvc repro distill`) or pass --model"
            )
    try:
        info = json.loads(config_path.read_text())
        model = Student(StudentConfig(**info["config"]))
    except (ValueError, KeyError, TypeError) as err:
        raise StudentLoadError(f"{config_path} is not a student config ({err}); re-export or rerun distill") from None
    try:
        state = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise StudentLoadError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise StudentLoadError(f"{path} does not match its config {config_path}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), info.get("meta", {})

def smallest_side(config: StudentConfig) -> int:
    """The smallest height and width (pixels) the student runs on, for any ``config``.

    A side must exceed ``2 ** downsamples``, so that the residual blocks' reflection padding finds
    2 pixels at the lowest resolution (and instance norm more than one value), and be at least 4,
    for the 7x7 stem's reflection padding of 3.
    """
    return max(config.multiple + 1, 4)
