"""The `eval-data` stage command: the packaged real photos, copied into the test folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, clean_errors
from diffsketch.core import load_params


def eval_data(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the photos, LICENSES.md and manifest.json")] = Path("data/eval"),
    set_: SetOption = None,
) -> None:
    """Copy the freely licensed real photos that ship inside installed packages into the test folder."""
    from diffsketch.evaluation import run_eval_data

    with clean_errors():
        entries = run_eval_data(load_params(params, set_).eval_data, out)
    typer.echo(f"{len(entries)} photos -> {out} (licences in {out / 'LICENSES.md'})")
