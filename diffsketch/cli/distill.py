"""The `distill` stage command: the fast student network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, clean_errors
from diffsketch.core import load_params


def distill(
    params: ParamsOption = Path("params.yaml"),
    pairs_path: Annotated[Path, typer.Option("--pairs", help="pairs store from `pairs`")] = Path("data/pairs.zarr"),
    out: Annotated[Path, typer.Option("--out", "-o", help="student weights")] = Path("models/student.safetensors"),
    live: Annotated[Path, typer.Option(help="dvclive folder")] = Path("reports/distill"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/distill-checkpoints"),
    overwrite: Annotated[bool, typer.Option(help="discard checkpoints made with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the fast image-to-sketch student on the generated pairs (resumes from its last checkpoint)."""
    from diffsketch.student import run_distill

    with clean_errors():
        result = run_distill(load_params(params, set_), pairs_path, out, live, progress=progress, checkpoints=checkpoints,
                             overwrite=overwrite)  # fmt: skip
    typer.echo(f"held-out L1 {result['l1']:.4f} (blank output {result['blank_l1']:.4f}) -> {out}")
