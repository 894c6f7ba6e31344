"""`diffsketch ablate`: the paper's ablation rows as DVC experiments, and their report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, clean_errors, fail


def ablate(
    rows: Annotated[Path, typer.Option(help="the ablation rows: name -> description and params changes")] = Path("presets/ablations.yaml"),
    only: Annotated[list[str] | None, typer.Option("--only", help="run just this row (repeatable)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="experiments run at once (dvc queue start --jobs)")] = 1,
    report_only: Annotated[bool, typer.Option("--report", help="write the report from the finished rows; run nothing")] = False,
    out: Annotated[Path, typer.Option(help="folder of the ablation report")] = Path("reports/ablation"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the paper's ablations as DVC experiments (rows without a result only), then write their report."""
    from diffsketch.ablation import check_repo, collect, head_commit, load_rows, run_ablation, write_report

    with clean_errors():
        selected = load_rows(rows, only)
        if report_only:
            check_repo(Path.cwd())
        else:
            run_ablation(Path.cwd(), selected, jobs, params, echo=typer.echo)
        results = collect(Path.cwd(), selected)
        if not results:
            fail(f"no row of {rows} has finished yet; run diffsketch ablate first")
        missing = [r.name for r in selected if r.name not in {x.row.name for x in results}]
        if missing:
            typer.echo(f"not in the report (not run yet, or run with other params): {', '.join(missing)}")
        page = write_report(results, out, head_commit(Path.cwd()))
    typer.echo(f"wrote {page} ({len(results)} rows)")
