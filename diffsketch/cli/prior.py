"""The `prior` stage command: the text-condition prior CDST samples from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def prior(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="where to save the prior")] = Path("models/prior.safetensors"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Fit the text-condition prior (PCA-Gaussian of CLIP text embeddings) that CDST samples from."""
    from diffsketch.training import run_prior

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        fitted = run_prior(cfg, out, progress=progress)
    typer.echo(
        f"prior: {fitted.meta['captions']} captions, {fitted.n_components} components "
        f"({100 * fitted.meta['explained_variance_ratio']:.1f}% of the variance) -> {out}"
    )
