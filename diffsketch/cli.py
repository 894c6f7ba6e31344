"""The `diffsketch` command line. Each command is a thin wrapper over the library.

Expected failures (bad params, missing files, unreachable models) print one clear message and exit
with code 1, without a traceback.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from diffsketch.config import ParamsError, load_params

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Learn a sketch style from one example with Stable Diffusion features.")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: section.key=value (repeatable)")]
ForceOption = Annotated[
    bool, typer.Option("--force", help="start even when the projected store is larger than the free disk space")
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def _expected_errors():
    from diffsketch.analysis import AnalysisInputError
    from diffsketch.collect import SampleInputError
    from diffsketch.models import ModelLoadError
    from diffsketch.prompts import PromptsError
    from diffsketch.example import ExampleError
    from diffsketch.export import ExportError
    from diffsketch.extract import ExtractError
    from diffsketch.generator import GeneratorLoadError
    from diffsketch.losses import LossSetupError
    from diffsketch.prior import PriorError
    from diffsketch.store import StoreError
    from diffsketch.styles import StyleError
    from diffsketch.pairs import PairsError
    from diffsketch.student import StudentLoadError
    from diffsketch.training import TrainInputError
    from diffsketch.evaldata import EvalDataError
    from diffsketch.evaluation import EvalError
    from diffsketch.presets import PresetError
    from diffsketch.checkpoint import NonFiniteError
    from diffsketch.distillation import DistillError
    from diffsketch.ablation import AblationError

    return (
        AblationError, ParamsError, SampleInputError, ModelLoadError, PromptsError, StoreError, AnalysisInputError,
        PriorError, ExampleError, StyleError, LossSetupError, TrainInputError, GeneratorLoadError, PairsError,
        StudentLoadError, ExtractError, ExportError, EvalDataError, EvalError, PresetError, NonFiniteError, DistillError,
    )  # fmt: skip


@contextmanager
def _clean_errors():
    """Expected failures print one message and exit 1; anything else keeps its traceback."""
    try:
        yield
    except _expected_errors() as err:
        _fail(str(err))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec"):  # "Found credentials in environment variables", ...
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def preset(
    name: Annotated[str | None, typer.Argument(help="preset to write: smoke, paper, ... (omit to list them)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="params file to write")] = Path("params.yaml"),
    force: Annotated[bool, typer.Option(help="replace a params file with your own edits (kept as .bak)")] = False,
    presets: Annotated[Path, typer.Option(help="folder of preset files")] = Path("presets"),
) -> None:
    """Write a whole parameter profile (every key) to params.yaml, e.g. `diffsketch preset paper`."""
    from diffsketch.presets import apply_preset, available

    with _clean_errors():
        if name is None:
            for key, path in available(presets).items():
                first = path.read_text().splitlines()[0].lstrip("# ") if path.stat().st_size else ""
                typer.echo(f"{key:10} {first}")
            return
        backup = apply_preset(name, out, force=force, folder=presets)
    if backup is not None:
        typer.echo(f"your previous {out} is saved as {backup}")
    typer.echo(f"wrote preset {name} to {out}; run `dvc repro` (or `dvc exp run` to track it as an experiment)")


@app.command()
def sample(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="feature store to write")] = Path("data/features.zarr"),
    overwrite: Annotated[bool, typer.Option(help="replace a store sampled with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    force: ForceOption = False,
) -> None:
    """Sample SD trajectories and store UNet/VAE features in a Zarr store (resumable)."""
    from diffsketch.collect import run_sample

    with _clean_errors():
        path = run_sample(load_params(params, set_), out, overwrite=overwrite, progress=progress, force=force)
    typer.echo(f"wrote {path}")


@app.command()
def analyze(
    params: ParamsOption = Path("params.yaml"),
    store: Annotated[Path, typer.Option(help="feature store written by `sample`")] = Path("data/features.zarr"),
    results: Annotated[Path, typer.Option(help="folder for the saved analysis")] = Path("data/analysis"),
    timesteps: Annotated[Path, typer.Option(help="the chosen timesteps, read by training")] = Path("data/timesteps.json"),
    reports: Annotated[Path, typer.Option(help="folder for the HTML report, metrics and plots")] = Path("reports/analysis"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Choose the representative timesteps (PCA + k-means) and write the feature-analysis report."""
    from diffsketch.analysis import analyze as run_analysis
    from diffsketch.analysis import write_outputs
    from diffsketch.report import write_report

    with _clean_errors():
        cfg = load_params(params, set_)
        result = run_analysis(store, cfg.analyze, model_id=cfg.model.id, progress=progress, model=cfg.model)
        write_outputs(result, results, timesteps, reports)
        page = write_report(result, reports)
    chosen = result.timesteps_json()
    typer.echo(f"k={chosen['k']} timesteps {chosen['timesteps']} -> {timesteps}; report {page}")


@app.command()
def prior(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="where to save the prior")] = Path("models/prior.safetensors"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Fit the text-condition prior (PCA-Gaussian of CLIP text embeddings) that CDST samples from."""
    from diffsketch.prior import run_prior

    with _clean_errors():
        fitted = run_prior(load_params(params, set_), out, progress=progress)
    typer.echo(
        f"prior: {fitted.meta['captions']} captions, {fitted.n_components} components "
        f"({100 * fitted.meta['explained_variance_ratio']:.1f}% of the variance) -> {out}"
    )


@app.command()
def train(
    params: ParamsOption = Path("params.yaml"),
    timesteps: Annotated[Path, typer.Option(help="representative timesteps from `analyze`")] = Path("data/timesteps.json"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior from `prior`")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="trained generator weights")] = Path("models/generator.safetensors"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/checkpoints"),
    live: Annotated[Path, typer.Option(help="dvclive folder: loss curves, sample grids")] = Path("reports/train"),
    overwrite: Annotated[bool, typer.Option(help="discard checkpoints made with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the sketch generator on the one example with CDST (resumes from the latest checkpoint)."""
    from diffsketch.training import TrainPaths, run_train

    paths = TrainPaths(timesteps=timesteps, prior=prior_path, generator=out, checkpoints=checkpoints, live=live)
    with _clean_errors():
        record = run_train(load_params(params, set_), paths, overwrite=overwrite, progress=progress)
    typer.echo(f"final loss {record.get('loss', float('nan')):.4f} (L1 {record.get('l1', float('nan')):.4f}) -> {out}")


@app.command()
def pairs(
    params: ParamsOption = Path("params.yaml"),
    generator: Annotated[Path, typer.Option(help="trained generator")] = Path("models/generator.safetensors"),
    prior_path: Annotated[Path, typer.Option("--prior", help="text prior")] = Path("models/prior.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs store to write")] = Path("data/pairs.zarr"),
    overwrite: Annotated[bool, typer.Option(help="replace a store made from another generator, prior or settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    force: ForceOption = False,
) -> None:
    """Generate (image, sketch) pairs with the trained generator for distillation (resumable)."""
    from diffsketch.pairs import run_pairs

    with _clean_errors():
        path = run_pairs(load_params(params, set_), generator, prior_path, out, overwrite=overwrite, progress=progress,
                         force=force)  # fmt: skip
    typer.echo(f"wrote {path}")


@app.command()
def distill(
    params: ParamsOption = Path("params.yaml"),
    pairs_path: Annotated[Path, typer.Option("--pairs", help="pairs store from `pairs`")] = Path("data/pairs.zarr"),
    out: Annotated[Path, typer.Option("--out", "-o", help="student weights")] = Path("models/student.safetensors"),
    live: Annotated[Path, typer.Option(help="dvclive folder")] = Path("reports/distill"),
    checkpoints: Annotated[Path, typer.Option(help="folder of resumable checkpoints")] = Path("models/distill-checkpoints"),
    overwrite: Annotated[bool, typer.Option(help="discard checkpoints made with other settings")] = False,
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the fast image-to-sketch student on the generated pairs (resumes from its last checkpoint)."""
    from diffsketch.distillation import run_distill

    with _clean_errors():
        result = run_distill(load_params(params, set_), pairs_path, out, live, progress=progress, checkpoints=checkpoints,
                             overwrite=overwrite)  # fmt: skip
    typer.echo(f"held-out L1 {result['l1']:.4f} (blank output {result['blank_l1']:.4f}) -> {out}")


@app.command("eval-data")
def eval_data(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the photos, LICENSES.md and manifest.json")] = Path("data/eval"),
    set_: SetOption = None,
) -> None:
    """Copy the freely licensed real photos that ship inside installed packages into the test folder."""
    from diffsketch.evaldata import run_eval_data

    with _clean_errors():
        entries = run_eval_data(load_params(params, set_).eval_data, out)
    typer.echo(f"{len(entries)} photos -> {out} (licences in {out / 'LICENSES.md'})")


@app.command()
def evaluate(
    params: ParamsOption = Path("params.yaml"),
    student: Annotated[Path, typer.Option(help="student from the distill stage")] = Path("models/student.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the report, metrics and plots data")] = Path("reports/eval"),
    set_: SetOption = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Score the student and the baselines against the ground-truth style on real photos; write the report."""
    from diffsketch.eval_report import run_evaluate

    with _clean_errors():
        result = run_evaluate(load_params(params, set_), student, out, progress=progress)
    width = max(len(m) for m in result.means)
    for method, values in result.means.items():
        typer.echo(f"{method:<{width}}  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    typer.echo(f"{result.summary['images']} images, ground truth {result.summary['ground_truth']} -> {out / 'index.html'}")


@app.command()
def results(
    reports: Annotated[Path, typer.Option(help="folder written by `evaluate`")] = Path("reports/eval"),
    readme: Annotated[Path | None, typer.Option(help="also write the table between the results markers of this README")] = None,
) -> None:
    """Print the evaluation's mean scores as Markdown (and put them into the README with --readme)."""
    from diffsketch.eval_report import saved_results, update_readme

    with _clean_errors():
        block = saved_results(reports) if readme is None else update_readme(readme, reports)
    typer.echo(block)


@app.command()
def report(
    results: Annotated[Path, typer.Option(help="folder of a saved analysis")] = Path("data/analysis"),
    reports: Annotated[Path, typer.Option(help="folder for the HTML report")] = Path("reports/analysis"),
) -> None:
    """Regenerate the feature-analysis HTML report from saved results, without recomputing."""
    from diffsketch.analysis import AnalysisResult
    from diffsketch.report import write_report

    with _clean_errors():
        page = write_report(AnalysisResult.load(results), reports)
    typer.echo(f"wrote {page}")


@app.command()
def ablate(
    rows: Annotated[Path, typer.Option(help="the ablation rows: name -> description and params changes")] = Path("presets/ablations.yaml"),
    only: Annotated[list[str] | None, typer.Option("--only", help="run just this row (repeatable)")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="experiments run at once (dvc queue start --jobs)")] = 1,
    report_only: Annotated[bool, typer.Option("--report", help="write the report from the finished rows; run nothing")] = False,
    out: Annotated[Path, typer.Option(help="folder of the ablation report")] = Path("reports/ablation"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the paper's ablations as DVC experiments (rows without a result only), then write their report."""
    from diffsketch.ablation import check_repo, collect, head_commit, load_rows, run_ablation
    from diffsketch.ablation_report import write_report

    with _clean_errors():
        selected = load_rows(rows, only)
        if report_only:
            check_repo(Path.cwd())
        else:
            run_ablation(Path.cwd(), selected, jobs, params, echo=typer.echo)
        results = collect(Path.cwd(), selected)
        if not results:
            _fail(f"no row of {rows} has finished yet; run diffsketch ablate first")
        missing = [r.name for r in selected if r.name not in {x.row.name for x in results}]
        if missing:
            typer.echo(f"not in the report (not run yet, or run with other params): {', '.join(missing)}")
        page = write_report(results, out, head_commit(Path.cwd()))
    typer.echo(f"wrote {page} ({len(results)} rows)")


def _verify_store(path: Path, repair: bool, progress: bool) -> None:
    """`inspect --verify` / `--repair`: list the damaged entries and arrays; exit status 1 when
    anything is damaged (with --repair: when anything is left that a rerun cannot redo)."""
    from diffsketch import verify

    with _clean_errors():
        result = verify.verify(path, progress=progress)
        cleared = verify.repair(result) if repair else []
    found = "no damage" if result.ok else f"{len(result.problems)} damaged"
    typer.echo(f"store        {result.path}")
    typer.echo(f"verified     {result.entries} complete {result.kinds}, {result.chunks} chunks: {found}")
    width = max((len(p.array) for p in result.problems), default=0)
    for p in result.problems:
        where = "whole store" if p.entry is None else f"{result.kind} {p.entry}"
        typer.echo(f"  {where:<16} {p.array:<{width}}  {p.kind}: {p.detail}")
    if cleared:
        typer.echo(f"repaired     completion flag cleared for {result.kinds} {cleared}: rerun `{result.rerun}` with the "
                   "same settings (or `dvc repro`) to redo exactly them")  # fmt: skip
    errors = []
    if result.damaged and not repair:
        errors.append(f"{len(result.damaged)} damaged {result.kinds} {result.damaged}: run `diffsketch inspect --repair "
                      f"{result.path}`, then `{result.rerun}` with the same settings redoes exactly them")  # fmt: skip
    if result.whole_store:
        errors.append(f"arrays written once for the whole store are damaged ({', '.join(p.array for p in result.whole_store)}), "
                      f"which no rerun redoes: make the store again (`{result.rerun} --overwrite`)")  # fmt: skip
    if errors:
        _fail("; ".join(errors))


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(help="feature or pairs store (.zarr folder or fsspec URL)")],
    verify: Annotated[
        bool, typer.Option("--verify", help="read and decode every chunk of every completed entry and list what is missing or corrupt (exit status 1 if anything is)")
    ] = False,
    repair: Annotated[
        bool, typer.Option("--repair", help="verify, then clear the completion flag of the damaged entries, so that the next `sample` / `pairs` run redoes exactly them")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar while verifying")] = True,
) -> None:
    """Summarise a store: arrays, shapes, dtypes, completed entries, size on disk (--verify: check every chunk)."""
    from diffsketch.store import summary

    if verify or repair:
        _verify_store(store, repair, progress)
        return
    with _clean_errors():
        info = summary(store)
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


@app.command()
def extract(
    inputs: Annotated[list[str], typer.Argument(help="image files, folders and glob patterns (quote patterns: 'photos/**/*.jpg')")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder: <stem>.png per image, folder sub-paths kept")],
    model: Annotated[Path, typer.Option("--model", "-m", help="student from the distill stage, or a style folder")] = Path("models/student.safetensors"),
    size: Annotated[
        int | None,
        typer.Option(min=1, help="cap the long side: larger images are downscaled (antialiased) before the network, and the sketch is written at that reduced size"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="consecutive images of the same size sketched in one forward pass")] = 8,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, torch or onnx (ONNX Runtime); auto: torch, or onnx for an ONNX-only model")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (torch only); auto: bf16 on CPUs with AMX / AVX-512 BF16, else fp32")] = "auto",
    format_: Annotated[str, typer.Option("--format", help="png, or svg: the lines traced into vector paths (vtracer)")] = "png",
    transparent: Annotated[bool, typer.Option(help="RGBA PNG: black ink, alpha = 1 - sketch (transparent paper)")] = False,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="binarise: values below it become ink, the rest paper (svg: the tracing threshold, default 0.5)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs (default: skip them)")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="also look in the subfolders of folder inputs")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Sketch images with the distilled student: one PNG (or SVG) per image, the size of the input.

    Dark lines on white, 8-bit grey (or RGBA with --transparent; --format svg: traced paths). Folders give their .png .jpg .jpeg .bmp .tif .tiff .webp
    files; a file named explicitly is always tried. Unreadable images are reported and skipped; exit status 1 if any failed.
    """
    from diffsketch.extract import run_extract

    with _clean_errors():
        report = run_extract(
            inputs, out, model, size=size, batch_size=batch_size, device=device, backend=backend, precision=precision,
            transparent=transparent, threshold=threshold, format=format_, overwrite=overwrite, recursive=recursive,
            progress=progress,
        )  # fmt: skip
    shown = 10
    for target in report.skipped[:shown]:
        typer.echo(f"skipped, exists: {target} (use --overwrite to replace it)")
    if len(report.skipped) > shown:
        typer.echo(f"... and {len(report.skipped) - shown} more existing outputs skipped")
    typer.echo(f"{report.summary()} -> {out}")
    if report.failed:
        typer.secho("failed:", err=True, fg=typer.colors.RED)
        for failure in report.failed:
            typer.secho(f"  {failure.message}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1)


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="student from the distill stage")] = Path("models/student.safetensors"),
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write (without --style)")] = Path("models/student.onnx"),
    style: Annotated[
        Path | None, typer.Option(help="write a style folder instead: weights, config, ONNX, example thumbnails, README.md model card")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    reports: Annotated[Path, typer.Option(help="evaluation to put in the model card (--style)")] = Path("reports/eval"),
    licence: Annotated[str | None, typer.Option(help="the style's licence, for the model card (--style)")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer)")] = 18,
    check: Annotated[
        bool | None, typer.Option("--check/--no-check", help="compare ONNX Runtime with PyTorch (default: on when onnxruntime is installed)")
    ] = None,
) -> None:
    """Export the student to ONNX (dynamic batch, height and width) and check it, or write a style folder (--style)."""
    from diffsketch.export import TOLERANCE, export_onnx, export_style, onnxruntime_available, verify_onnx

    if check is None:
        check = onnxruntime_available()
        if not check:
            typer.echo("onnxruntime is not installed: not checking the export (pip install onnxruntime)")
    elif check and not onnxruntime_available():
        _fail("--check needs onnxruntime: install it with `pip install onnxruntime`, or pass --no-check")
    if style is not None:
        with _clean_errors():
            folder = export_style(model, style, params, reports, licence=licence, opset=opset, check=check)
        typer.echo(f"wrote style folder {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
        if licence is None:
            typer.echo("no --licence given: the model card says the licence is not specified")
        return
    with _clean_errors():
        path = export_onnx(model, out, opset=opset, check=False)
        diff = verify_onnx(path, model) if check else None
    typer.echo(f"wrote {path}")
    if diff is not None:
        typer.echo(f"check: ONNX Runtime matches PyTorch, max abs diff {diff:.2e} (tolerance {TOLERANCE:.0e})")


@app.command()
def serve(
    styles: Annotated[Path, typer.Option(help="folder of style folders (written by `export --style`)")] = Path("styles"),
    host: Annotated[str, typer.Option(help="address to listen on; the default answers this computer only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, torch or onnx")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="largest accepted upload, in MB")] = 25.0,
    max_megapixels: Annotated[float, typer.Option(min=0.01, help="largest accepted image, in megapixels (checked from the header)")] = 40.0,
) -> None:
    """A local web page: drop photos, pick a style, download the sketches as PNG, SVG or ZIP."""
    from diffsketch.extractor import resolve_device
    from diffsketch.web import serve as run_server

    from diffsketch.extract import ExtractError

    from diffsketch.extractor import BACKENDS

    with _clean_errors():
        resolve_device(device)
        if backend not in BACKENDS:
            raise ExtractError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not styles.is_dir():
            raise ExtractError(f"--styles {styles} is not a folder; write a style with `diffsketch export --style {styles}/NAME`")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: other computers on the network can use this page", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"diffsketch page on http://{host}:{port}/ (styles from {styles}); Ctrl-C to stop")
    run_server(styles, host=host, port=port, device=device, backend=backend, max_upload_mb=max_upload_mb,
               max_pixels=int(max_megapixels * 1e6))  # fmt: skip
