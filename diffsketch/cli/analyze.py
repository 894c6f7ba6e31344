"""The `analyze` stage command and `report` (the analysis report from saved results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, SetOption, ThreadsOption, clean_errors, use_threads
from diffsketch.core import load_params


def analyze(
    params: ParamsOption = Path("params.yaml"),
    store: Annotated[Path, typer.Option(help="feature store written by `sample`")] = Path("data/features.zarr"),
    results: Annotated[Path, typer.Option(help="folder for the saved analysis")] = Path("data/analysis"),
    timesteps: Annotated[Path, typer.Option(help="the chosen timesteps, read by training")] = Path("data/timesteps.json"),
    reports: Annotated[Path, typer.Option(help="folder for the HTML report, metrics and plots")] = Path("reports/analysis"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Choose the representative timesteps (PCA + k-means) and write the feature-analysis report."""
    from diffsketch.analysis import analyze as run_analysis
    from diffsketch.analysis import write_outputs, write_report

    with clean_errors():
        cfg = load_params(params, set_)
        use_threads(threads, cfg)
        result = run_analysis(store, cfg.analyze, model_id=cfg.model.id, progress=progress, model=cfg.model)
        write_outputs(result, results, timesteps, reports)
        page = write_report(result, reports)
    chosen = result.timesteps_json()
    typer.echo(f"k={chosen['k']} timesteps {chosen['timesteps']} -> {timesteps}; report {page}")


def report(
    results: Annotated[Path, typer.Option(help="folder of a saved analysis")] = Path("data/analysis"),
    reports: Annotated[Path, typer.Option(help="folder for the HTML report")] = Path("reports/analysis"),
) -> None:
    """Regenerate the feature-analysis HTML report from saved results, without recomputing."""
    from diffsketch.analysis import AnalysisResult, write_report

    with clean_errors():
        page = write_report(AnalysisResult.load(results), reports)
    typer.echo(f"wrote {page}")
