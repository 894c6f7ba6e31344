"""The `distill` stage command: the fast student network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def distill(
    params: ParamsOption = Path("params.yaml"),
    pairs_path: Annotated[Path, typer.Option("--pairs", help="pairs store from `pairs`")] = Path("data/pairs.zarr"),
    out: Annotated[Path, typer.Option("--out", "-o", help="student weights")] = Path("models/student.safetensors"),
    live: Annotated[Path, typer.Option(help="dvclive folder")] = Path("reports/distill"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/distill-checkpoints"),
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="start over: delete every checkpoint in the folder (by default other settings' checkpoints are kept)")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Train the fast image-to-sketch student on the generated pairs (resumes from its last checkpoint)."""
    from diffsketch.student import run_distill

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        result = run_distill(cfg, pairs_path, out, live, progress=progress, checkpoints=checkpoints,
                             overwrite=overwrite)  # fmt: skip
    typer.echo(f"held-out L1 {result['l1']:.4f} (blank output {result['blank_l1']:.4f}) -> {out}")
