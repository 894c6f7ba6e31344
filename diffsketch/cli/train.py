"""The `train` stage command: the one-shot sketch generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, clean_errors
from diffsketch.core import load_params


def train(
    params: ParamsOption = Path("params.yaml"),
    timesteps: Annotated[Path, typer.Option(help="representative timesteps from `analyze`")] = Path("data/timesteps.json"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior from `prior`")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="trained generator weights")] = Path("models/generator.safetensors"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/checkpoints"),
    live: Annotated[Path, typer.Option(help="dvclive folder: loss curves, sample grids")] = Path("reports/train"),
    overwrite: Annotated[bool, typer.Option(help="discard checkpoints made with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the sketch generator on the one example with CDST (resumes from the latest checkpoint)."""
    from diffsketch.training import TrainPaths, run_train

    paths = TrainPaths(timesteps=timesteps, prior=prior_path, generator=out, checkpoints=checkpoints, live=live)
    with clean_errors():
        record = run_train(load_params(params, set_), paths, overwrite=overwrite, progress=progress)
    typer.echo(f"final loss {record.get('loss', float('nan')):.4f} (L1 {record.get('l1', float('nan')):.4f}) -> {out}")
