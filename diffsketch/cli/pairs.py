"""The `pairs` stage command: (image, sketch) pairs from the trained generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ForceOption, ParamsOption, SetOption, clean_errors
from diffsketch.core import load_params


def pairs(
    params: ParamsOption = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="trained generator")] = Path("models/generator.safetensors"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs store to write")] = Path("data/pairs.zarr"),
    overwrite: Annotated[bool, typer.Option(help="replace a store made from another generator, prior or settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    force: ForceOption = False,
) -> None:
    """Generate (image, sketch) pairs with the trained generator for distillation (resumable)."""
    from diffsketch.student import run_pairs

    with clean_errors():
        path = run_pairs(load_params(params, set_), generator, prior_path, out, overwrite=overwrite, progress=progress,
                         force=force)  # fmt: skip
    typer.echo(f"wrote {path}")
