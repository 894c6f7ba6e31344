"""Parameter profiles: whole ``params.yaml`` files kept in ``presets/`` (``smoke``, ``paper``).

``diffsketch preset paper`` writes ``presets/paper.yaml`` over ``params.yaml``, so that every value
of the profile holds (overriding a few keys on the command line would keep the smoke values of all
the others). The file is copied as it is, comments included, after it validates against the
params schema. A ``params.yaml`` that is a copy of a preset is replaced freely; one with your own
edits is kept unless ``force`` is given, and then saved beside it as ``params.yaml.bak`` first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffsketch.core.errors import DiffsketchError
from diffsketch.core.params import ParamsError, load_params

PRESETS_DIR = Path("presets")
ABLATIONS_FILE = "ablations.yaml"  # the ablation rows of `diffsketch ablate` (diffsketch.ablation.runner), not a profile


class PresetError(DiffsketchError, ValueError):
    """A preset is unknown or invalid, or writing it would lose edits; the message says what to do."""


def available(folder: Path = PRESETS_DIR) -> dict[str, Path]:
    return {path.stem: path for path in sorted(Path(folder).glob("*.yaml")) if path.name != ABLATIONS_FILE}


def preset_file(name: str, folder: Path = PRESETS_DIR) -> Path:
    presets = available(folder)
    if name not in presets:
        where = f"in {folder}" if presets else f"({folder} has none: run from the project root or pass --presets)"
        raise PresetError(f"unknown preset {name!r}; available {', '.join(presets) or 'none'} {where}")
    try:
        load_params(presets[name])
    except ParamsError as err:
        raise PresetError(f"preset {name!r} does not validate: {err}") from None
    return presets[name]


def apply_preset(name: str, out: Path = Path("params.yaml"), force: bool = False, folder: Path = PRESETS_DIR) -> Path | None:
    """Copy preset ``name`` to ``out``; returns the backup made of an edited ``out``, if any."""
    source = preset_file(name, folder)
    out = Path(out)
    backup = None
    if out.is_file():
        text = out.read_text()
        if text == source.read_text():
            return None
        if not any(text == path.read_text() for path in available(folder).values()):
            if not force:
                raise PresetError(
                    f"{out} has edits that are in no preset; pass --force to replace it (it is kept as "
                    f"{out.name}.bak), or commit it first"
                )
            backup = out.with_name(out.name + ".bak")
            shutil.copyfile(out, backup)
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(out)
    return backup
