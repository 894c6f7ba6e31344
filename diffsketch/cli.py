"""The `diffsketch` command line. Each command is a thin wrapper over the library.

Expected failures (bad params, missing files, unreachable models) print one clear message and exit
with code 1, without a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from diffsketch.config import ParamsError, load_params

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Learn a sketch style from one example with Stable Diffusion features.")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: section.key=value (repeatable)")]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _expected_errors():
    from diffsketch.collect import SampleInputError
    from diffsketch.models import ModelLoadError
    from diffsketch.prompts import PromptsError
    from diffsketch.store import StoreError

    return (ParamsError, SampleInputError, ModelLoadError, PromptsError, StoreError)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def sample(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="feature store to write")] = Path("data/features.zarr"),
    overwrite: Annotated[bool, typer.Option(help="replace a store sampled with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Sample SD trajectories and store UNet/VAE features in a Zarr store (resumable)."""
    errors = _expected_errors()
    try:
        from diffsketch.collect import run_sample

        cfg = load_params(params, set_)
        path = run_sample(cfg, out, overwrite=overwrite, progress=progress)
    except errors as err:
        _fail(str(err))
    typer.echo(f"wrote {path}")


@app.command()
def inspect(store: Annotated[Path, typer.Argument(help="feature store (.zarr folder)")]) -> None:
    """Summarise a feature store: arrays, shapes, dtypes, completed trajectories, size on disk."""
    from diffsketch.store import StoreError, summary

    try:
        info = summary(store)
    except StoreError as err:
        _fail(str(err))
    attrs = info["attrs"]
    typer.echo(f"store        {info['path']}")
    typer.echo(f"model        {attrs.get('model')} ({attrs.get('dtype')}), diffsketch {attrs.get('package_version')}")
    typer.echo(
        f"sampling     {attrs.get('steps')} DDIM steps, guidance {attrs.get('guidance')}, eta {attrs.get('eta')}, "
        f"{attrs.get('resolution')} px, pool {attrs.get('pool')}, halves {attrs.get('halves')}, capture {attrs.get('capture')}"
    )
    typer.echo(f"trajectories {info['complete']}/{info['trajectories']} complete")
    typer.echo(f"prompts      {len(attrs.get('prompts', []))} in {len(attrs.get('classes', []))} classes")
    typer.echo(f"size         {info['disk_bytes'] / 1e6:.2f} MB on disk, compression ratio {info['compression_ratio']:.2f}x")
    typer.echo("arrays:")
    width = max(len(name) for name, *_ in info["arrays"])
    for name, shape, dtype, chunks in info["arrays"]:
        typer.echo(f"  {name:<{width}}  {str(tuple(shape)):<28} {dtype:<8} chunks {tuple(chunks)}")
