"""`diffsketch checkpoints`: the resumable work kept for other settings, and removing it.

Checkpoints of `train` and `distill` live under their key, and stores of `sample` and `pairs` made
with other settings are kept beside the store (``<store>.kept/<key>``), so a parameter set back
resumes its earlier work. This command lists that work with its size, marks what the current outputs
were made from, and with ``--remove`` deletes the rest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import clean_errors


def _key_of(meta_file: Path) -> str | None:
    """The ``key`` recorded in a generator's or student's ``.json`` (None when absent or unreadable)."""
    try:
        return json.loads(meta_file.read_text()).get("meta", {}).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def checkpoints(
    train_checkpoints: Annotated[Path, typer.Option("--train", help="train's checkpoint folder")] = Path("models/checkpoints"),
    generator: Annotated[Path, typer.Option(help="the current generator (its key is in use)")] = Path("models/generator.safetensors"),
    distill_checkpoints: Annotated[Path, typer.Option("--distill", help="distill's checkpoint folder")] = Path("models/distill-checkpoints"),
    student: Annotated[Path, typer.Option(help="the current student (its key is in use)")] = Path("models/student.safetensors"),
    stores: Annotated[list[Path] | None, typer.Option("--store", help="a store whose kept copies to list (repeatable)")] = None,
    remove: Annotated[bool, typer.Option("--remove/--keep", help="delete the work no current output was made from")] = False,
) -> None:
    """List the checkpoints and stores kept for other settings (what `--remove` would free); `--remove` deletes them."""
    from diffsketch.store import kept_stores
    from diffsketch.training import kept_runs

    with clean_errors():
        rows: list[tuple[str, Path, str, int, bool]] = []  # what, where, progress, bytes, in use
        for what, folder, output in (("train", train_checkpoints, generator), ("distill", distill_checkpoints, student)):
            in_use = _key_of(output.with_suffix(".json"))
            for run in kept_runs(folder):
                rows.append((what, run.folder, f"iteration {run.iterations}", run.bytes, run.folder.name == in_use))
        for store in stores or [Path("data/features.zarr"), Path("data/pairs.zarr")]:
            for path, size in kept_stores(store):
                rows.append((store.name, path, "kept store", size, False))
        if not rows:
            typer.echo("no checkpoints or kept stores found")
            return
        unused = [r for r in rows if not r[4]]
        for what, path, progress, size, used in rows:
            typer.echo(f"{'in use' if used else 'unused':7} {what:14} {_size(size):>9}  {progress:16} {path}")
        freed = sum(r[3] for r in unused)
        if not remove:
            typer.echo(f"{len(unused)} unused, {_size(freed)} in all; `diffsketch checkpoints --remove` deletes them")
            return
        for _, path, _, _, _ in unused:
            shutil.rmtree(path)
            parent = path.parent
            if parent.name.endswith(".kept") and not any(parent.iterdir()):
                parent.rmdir()
        typer.echo(f"removed {len(unused)} unused, freed {_size(freed)}")
