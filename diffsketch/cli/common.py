"""What every command shares: the common options, one-line errors, logging, and running one stage.

Expected failures (any :class:`~diffsketch.core.errors.DiffsketchError`: bad params, missing
files, unreachable models) print one clear message and exit with code 1, without a traceback.
Nothing here imports torch: ``diffsketch --help`` answers at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from diffsketch.core import DiffsketchError

HELP = "Learn a sketch style from one example with Stable Diffusion features."
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec")  # "Found credentials in environment variables", ...

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: section.key=value (repeatable)")]
ForceOption = Annotated[
    bool, typer.Option("--force", help="start even when the projected store is larger than the free disk space")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with code 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Expected failures print one message and exit 1; anything else keeps its traceback."""
    try:
        yield
    except DiffsketchError as err:
        fail(str(err))


def setup_logging(verbose: VerboseOption = False) -> None:
    """Log INFO (DEBUG with ``--verbose``) as ``LEVEL name: message``; third-party chatter only at WARNING."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in QUIET_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(command: Callable[..., None], args: Sequence[str]) -> None:
    """Run one command as a DVC stage script does: ``args`` start with the command's name.

    Only that command's module is imported (not the whole command line), so the stage's ``deps:``
    in ``dvc.yaml`` name exactly the code it runs.
    """
    app = typer.Typer(add_completion=False, help=HELP)
    app.callback()(setup_logging)
    app.command(args[0])(command)
    app(list(args))
