"""The `sample` stage command: SD trajectories and their features into the Zarr store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ForceOption, ParamsOption, SetOption, clean_errors
from diffsketch.core import load_params


def sample(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="feature store to write")] = Path("data/features.zarr"),
    overwrite: Annotated[bool, typer.Option(help="replace a store sampled with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    force: ForceOption = False,
) -> None:
    """Sample SD trajectories and store UNet/VAE features in a Zarr store (resumable)."""
    from diffsketch.store import run_sample

    with clean_errors():
        path = run_sample(load_params(params, set_), out, overwrite=overwrite, progress=progress, force=force)
    typer.echo(f"wrote {path}")
