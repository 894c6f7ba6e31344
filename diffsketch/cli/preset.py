"""Write a parameter profile: `diffsketch preset`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import clean_errors


def preset(
    name: Annotated[str | None, typer.Argument(help="preset to write: smoke, paper, ... (omit to list them)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="params file to write")] = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force/--no-force", help="replace a params file with your own edits (kept as .bak)")] = False,
    presets: Annotated[Path, typer.Option(help="folder of preset files")] = Path("presets"),
) -> None:
    """Write a whole parameter profile (every key) to params.yaml, e.g. `diffsketch preset paper`."""
    from diffsketch.core import apply_preset, available

    with clean_errors():
        if name is None:
            for key, path in available(presets).items():
                first = path.read_text().splitlines()[0].lstrip("# ") if path.stat().st_size else ""
                typer.echo(f"{key:10} {first}")
            return
        backup = apply_preset(name, out, force=force, folder=presets)
    if backup is not None:
        typer.echo(f"your previous {out} is saved as {backup}")
    typer.echo(f"wrote preset {name} to {out}; run `dvc repro` (or `dvc exp run` to track it as an experiment)")
