"""The `pairs` stage command: (image, sketch) pairs from the trained generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ForceOption, ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def pairs(
    params: ParamsOption = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="trained generator")] = Path("models/generator.safetensors"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs store to write")] = Path("data/pairs.zarr"),
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="replace a store made from another generator, prior or settings (by default it is kept in <out>.kept/<key>)")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    force: ForceOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Generate (image, sketch) pairs with the trained generator for distillation (resumable)."""
    from diffsketch.student import run_pairs

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        path = run_pairs(cfg, generator, prior_path, out, overwrite=overwrite, progress=progress,
                         force=force)  # fmt: skip
    typer.echo(f"wrote {path}")
