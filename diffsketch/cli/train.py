"""The `train` stage command: the one-shot sketch generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def train(
    params: ParamsOption = Path("params.yaml"),
    timesteps: Annotated[Path, typer.Option(help="representative timesteps from `analyze`")] = Path("data/timesteps.json"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior from `prior`")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="trained generator weights")] = Path("models/generator.safetensors"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/checkpoints"),
    live: Annotated[Path, typer.Option(help="dvclive folder: loss curves, sample grids")] = Path("reports/train"),
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="start over: delete every checkpoint in the folder (by default other settings' checkpoints are kept)")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Train the sketch generator on the one example with CDST (resumes from the latest checkpoint)."""
    from diffsketch.training import TrainPaths, run_train

    paths = TrainPaths(timesteps=timesteps, prior=prior_path, generator=out, checkpoints=checkpoints, live=live)
    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        record = run_train(cfg, paths, overwrite=overwrite, progress=progress)
    typer.echo(f"final loss {record.get('loss', float('nan')):.4f} (L1 {record.get('l1', float('nan')):.4f}) -> {out}")
