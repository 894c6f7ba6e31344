"""The `sample` stage command: SD trajectories and their features into the Zarr store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ForceOption, ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def sample(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="feature store to write")] = Path("data/features.zarr"),
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="replace a store sampled with other settings (by default it is kept in <out>.kept/<key>)")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    force: ForceOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Sample SD trajectories and store UNet/VAE features in a Zarr store (resumable)."""
    from diffsketch.store import run_sample

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        path = run_sample(cfg, out, overwrite=overwrite, progress=progress, force=force)
    typer.echo(f"wrote {path}")
