"""What every command shares: the common options, one-line errors, logging, and running one stage.

Expected failures (any :class:`~diffsketch.core.errors.DiffsketchError`: bad params, missing
files, unreachable models) print one clear message and exit with code 1, without a traceback.
Nothing here imports torch: ``diffsketch --help`` answers at once.

Importing this module makes idle OpenMP threads sleep rather than spin
(:func:`~diffsketch.core.threads.sleep_when_idle`), since the OpenMP runtime reads that once, when
torch loads: the command line and the stage scripts import it before anything imports torch.
Every command that computes takes ``--threads`` (:data:`ThreadsOption`, applied by
:func:`use_threads`), which overrides the ``threads`` setting of ``params.yaml``.
Boolean options are declared as ``--flag/--no-flag`` and the help is plain text
(:data:`HELP_STYLE`), so ``--help`` shows them as switches, not as values to type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from diffsketch.core import DiffsketchError, Params, ThreadsError, resolve_threads, sleep_when_idle

sleep_when_idle()  # before any command imports torch (see the module docstring)

HELP = "Learn a sketch style from one example with Stable Diffusion features."
HELP_STYLE: dict = {"rich_markup_mode": None}  # click's plain help: a flag reads --overwrite / --no-overwrite, with no <bool>
QUIET_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec")  # "Found credentials in environment variables", ...

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: section.key=value (repeatable)")]
ForceOption = Annotated[
    bool, typer.Option("--force/--no-force", help="start even when the projected store is larger than the free disk space")
]
VerboseOption = Annotated[bool, typer.Option("--verbose/--no-verbose", "-v", help="debug logging")]
ThreadsOption = Annotated[
    str | None,
    typer.Option(
        "--threads",
        metavar="auto|N",
        help="CPU threads for PyTorch and the BLAS libraries: auto (the cores this process may use and other processes "
        "leave free) or a number "
        "[default: the threads param of a command that reads params, else auto]",
        show_default=False,
    ),
]


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


def use_threads(option: str | None, params: Params | None = None) -> int:
    """Size the CPU thread pools for ``--threads`` (or, without it, the params' ``threads``; else ``auto``).

    Returns the thread count (see :mod:`diffsketch.core.threads`); a bad ``--threads`` fails with one line.
    """
    from diffsketch.core import apply_threads

    setting = option if option is not None else params.threads if params is not None else "auto"
    try:
        count = resolve_threads(setting)  # once: auto reads the busy cores and logs what it takes
    except ThreadsError:
        fail(f"--threads {option!r} is not a thread count; use auto or a whole number of at least 1, e.g. --threads 2")
    return apply_threads(count)


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
    app = typer.Typer(add_completion=False, help=HELP, **HELP_STYLE)
    app.callback()(setup_logging)
    app.command(args[0])(command)
    app(list(args))
