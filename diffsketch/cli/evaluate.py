"""The `evaluate` stage command, and `results` (the README's results table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def evaluate(
    params: ParamsOption = Path("params.yaml"),
    student: Annotated[Path, typer.Option(help="student from the distill stage")] = Path("models/student.safetensors"),
    generator: Annotated[Path | None, typer.Option(help="also score this trained generator directly (the method 'generator')")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the report, metrics and plots data")] = Path("reports/eval"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Score the student and the baselines against the ground-truth style on real photos; write the report."""
    from diffsketch.evaluation import run_evaluate

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        result = run_evaluate(cfg, student, out, progress=progress, generator_path=generator)
    width = max(len(m) for m in result.means)
    for method, values in result.means.items():
        typer.echo(f"{method:<{width}}  " + "  ".join(f"{k} {'no lines' if v is None else f'{v:.4f}'}" for k, v in values.items()))
    typer.echo(f"{result.summary['images']} images, ground truth {result.summary['ground_truth']} -> {out / 'index.html'}")


def results(
    reports: Annotated[Path, typer.Option(help="folder written by `evaluate`")] = Path("reports/eval"),
    readme: Annotated[Path | None, typer.Option(help="also write the table between the results markers of this README")] = None,
) -> None:
    """Print the evaluation's mean scores as Markdown (and put them into the README with --readme)."""
    from diffsketch.evaluation import saved_results, update_readme

    with clean_errors():
        block = saved_results(reports) if readme is None else update_readme(readme, reports)
    typer.echo(block)
