"""`diffsketch ablate`: the paper's ablation rows as DVC experiments, and their report."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, clean_errors, fail


def ablate(
    rows: Annotated[Path, typer.Option(help="the ablation rows: name -> description and params changes")] = Path("presets/ablations.yaml"),
    only: Annotated[list[str] | None, typer.Option("--only", help="run just these rows (repeatable, or comma-separated)")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, help="training seeds per row (default: 1 with the tiny model, else 3)")] = None,
    report_only: Annotated[bool, typer.Option("--report/--no-report", help="write the report from the finished rows; run nothing")] = False,
    show: Annotated[bool, typer.Option("--show/--no-show", help="print the finished rows' key scores (100 columns); run nothing")] = False,
    out: Annotated[Path, typer.Option(help="folder of the ablation report")] = Path("reports/ablation"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the paper's ablations as DVC experiments (rows x seeds without a result only, one by one), then write their report."""
    from diffsketch.ablation import check_repo, collect, head_commit, load_rows, run_ablation, show_table, write_report
    from diffsketch.core import load_params

    with clean_errors():
        names = [name.strip() for item in only or [] for name in item.split(",") if name.strip()]
        selected = load_rows(rows, names or None)
        check_repo(Path.cwd())  # before the params: the first thing a new user needs to fix
        if seeds is None:
            seeds = 1 if load_params(params).model.id == "tiny" else 3
        if not (report_only or show):
            run_ablation(Path.cwd(), selected, seeds, params, echo=typer.echo)
        results = collect(Path.cwd(), selected, seeds, params)
        if not results:
            fail(f"no row of {rows} has finished yet; run diffsketch ablate first")
        missing = [r.name for r in selected if r.name not in {x.row.name for x in results}]
        if show:
            typer.echo(show_table(results))
        if missing:
            text = f"not in the report (not run yet, or run with other params): {', '.join(missing)}"
            typer.echo(textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False))
        if show:
            return
        page = write_report(results, out, head_commit(Path.cwd()))
    typer.echo(f"wrote {page} ({len(results)} rows)")
