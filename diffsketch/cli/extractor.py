"""The extractor's commands: `extract` (files and folders), `export` (ONNX, style folders), `serve` (the web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import ParamsOption, ThreadsOption, clean_errors, fail, use_threads


def extract(
    inputs: Annotated[list[str], typer.Argument(help="image files, folders, glob patterns (quote patterns: 'photos/**/*.jpg') and video files (mp4 mov mkv webm gif)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder: <stem>.png per image, folder sub-paths kept; a video keeps its name, summary.json beside it")],
    model: Annotated[Path, typer.Option("--model", "-m", help="student from the distill stage, or a style folder")] = Path("models/student.safetensors"),
    size: Annotated[
        str | None,
        typer.Option(help="cap the long side (pixels): larger images are downscaled (antialiased) before the network, and the sketch is written at that reduced size; native (the default): the photo's own size, by tiles"),
    ] = None,
    tile: Annotated[int, typer.Option(min=0, help="photos with a side over this many pixels are sketched by overlapping tiles, equal to the whole image (0: always whole)")] = 512,
    max_megapixels: Annotated[float, typer.Option(min=0.01, help="photos with more megapixels are refused before decoding")] = 40.0,
    line_width: Annotated[float, typer.Option(min=0.25, max=16.0, help="stroke width factor: 1 as drawn, 3 two pixels wider, 0.5 thinner")] = 1.0,
    binarize: Annotated[str | None, typer.Option(metavar="LOW,HIGH", help="black and white lines by hysteresis: ink below LOW, and below HIGH where it touches such ink (e.g. 0.3,0.6)")] = None,
    min_speck: Annotated[int, typer.Option(min=0, help="remove ink specks of fewer pixels than this")] = 0,
    line_color: Annotated[str, typer.Option(help="ink colour: a name, #RRGGBB or rgb(r, g, b)")] = "black",
    background: Annotated[str | None, typer.Option(help="paper colour, or transparent (RGBA PNG); default white (PNG), none (SVG)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="consecutive images of the same size sketched in one forward pass")] = 8,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, torch or onnx (ONNX Runtime); auto: torch, or onnx for an ONNX-only model")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (torch only); auto: bf16 on CPUs with AMX / AVX-512 BF16, else fp32")] = "auto",
    format_: Annotated[str, typer.Option("--format", help="png, or svg: the lines traced into vector paths (vtracer)")] = "png",
    transparent: Annotated[bool, typer.Option("--transparent/--no-transparent", help="RGBA PNG: black ink, alpha = 1 - sketch (transparent paper)")] = False,
    threshold: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="binarise: values below it become ink, the rest paper (svg: the tracing threshold, default 0.5)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="replace existing outputs (default: skip them)")] = False,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", "-r", help="also look in the subfolders of folder inputs")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    temporal: Annotated[bool, typer.Option("--temporal/--no-temporal", help="videos: steady lines where the scene is still, following motion (--no-temporal: each frame alone)")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Sketch images with the distilled student: one PNG (or SVG) per image, the size of the input.

    Dark lines on white, 8-bit grey (or RGBA with --transparent; --format svg: traced paths). Folders give their .png .jpg .jpeg .bmp .tif .tiff .webp
    files; a file named explicitly is always tried. Unreadable images are reported and skipped; exit status 1 if any failed.
    A video file (mp4 mov mkv webm gif, named or matched by a pattern) gives a sketched clip of the same name, frame count,
    frame rate and audio, and out/summary.json with its flicker and lag.
    """
    from diffsketch.extractor import run_extract, split_videos

    use_threads(threads)
    with clean_errors():
        size = _size(size)
    videos, inputs = split_videos(inputs)
    videos_ok = True
    if videos:
        videos_ok = _extract_videos(videos, out, model, size, batch_size, device, backend, precision, format_, transparent,
                                    threshold, overwrite, progress, temporal)  # fmt: skip
        if not inputs:
            raise typer.Exit(code=0 if videos_ok else 1)
    with clean_errors():
        report = run_extract(
            inputs, out, model, size=size, batch_size=batch_size, device=device, backend=backend, precision=precision,
            transparent=transparent, threshold=threshold, format=format_, overwrite=overwrite, recursive=recursive,
            progress=progress, tile=tile, max_megapixels=max_megapixels, line_width=line_width, binarize=binarize,
            min_speck=min_speck, line_color=line_color, background=background,
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
    if report.failed or not videos_ok:
        raise typer.Exit(code=1)


def _size(size: str | None) -> int | None:
    """``--size``: a number of pixels, or native (None)."""
    from diffsketch.extractor import ExtractError

    if size is None or size.strip().lower() == "native":
        return None
    if not size.strip().isdigit() or int(size) < 1:
        raise ExtractError(f"--size {size} must be a positive number of pixels, or native")
    return int(size)


def _extract_videos(videos, out, model, size, batch_size, device, backend, precision, format_, transparent, threshold,
                    overwrite, progress, temporal) -> bool:  # fmt: skip
    """The video files of ``extract``: one sketched clip each and out/summary.json; False if any failed."""
    from diffsketch.extractor import ExtractError, SketchExtractor, extract_videos

    with clean_errors():
        if format_ != "png" or transparent:
            raise ExtractError("a video's sketch is written as a video of grey frames; --format svg and --transparent apply to images only")
        extractor = SketchExtractor.load(model, device, backend, precision=precision, batch_size=batch_size)
        run = extract_videos(extractor, videos, out, size=size, temporal=temporal, threshold=threshold, overwrite=overwrite,
                             progress=progress)  # fmt: skip
    for target in run.skipped:
        typer.echo(f"skipped, exists: {target} (use --overwrite to replace it)")
    for report in run.reports:
        typer.echo(report.line())
    if run.summary is not None:
        total = run.overall()
        typer.echo(f"{'temporal' if temporal else 'per-frame'}: flicker {total.flicker:.4f}, lag {total.lag:.4f} "
                   f"(per-frame flicker {total.per_frame_flicker:.4f}) -> {run.summary}")  # fmt: skip
    if run.failed:
        typer.secho("failed:", err=True, fg=typer.colors.RED)
        for message in run.failed:
            typer.secho(f"  {message}", err=True, fg=typer.colors.RED)
    return not run.failed


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
    threads: ThreadsOption = None,
) -> None:
    """Export the student to ONNX (dynamic batch, height and width) and check it, or write a style folder (--style)."""
    from diffsketch.evaluation import results_or_reason
    from diffsketch.extractor import export_style
    from diffsketch.student import TOLERANCE, export_onnx, onnxruntime_available, verify_onnx

    use_threads(threads)
    if check is None:
        check = onnxruntime_available()
        if not check:
            typer.echo("onnxruntime is not installed: not checking the export (pip install onnxruntime)")
    elif check and not onnxruntime_available():
        fail("--check needs onnxruntime: install it with `pip install onnxruntime`, or pass --no-check")
    if style is not None:
        with clean_errors():
            folder = export_style(model, style, params, results_or_reason(reports), licence=licence, opset=opset, check=check)
        typer.echo(f"wrote style folder {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))})")
        if licence is None:
            typer.echo("no --licence given: the model card says the licence is not specified")
        return
    with clean_errors():
        path = export_onnx(model, out, opset=opset, check=False)
        diff = verify_onnx(path, model) if check else None
    typer.echo(f"wrote {path}")
    if diff is not None:
        typer.echo(f"check: ONNX Runtime matches PyTorch, max abs diff {diff:.2e} (tolerance {TOLERANCE:.0e})")


def serve(
    styles: Annotated[Path, typer.Option(help="folder of style folders (written by `export --style`)")] = Path("styles"),
    host: Annotated[str, typer.Option(help="address to listen on; the default answers this computer only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda")] = "auto",
    backend: Annotated[str, typer.Option(help="auto, torch or onnx")] = "auto",
    max_upload_mb: Annotated[float, typer.Option(min=0.1, help="largest accepted upload, in MB")] = 25.0,
    max_megapixels: Annotated[float, typer.Option(min=0.01, help="largest accepted image, in megapixels (checked from the header)")] = 40.0,
    threads: ThreadsOption = None,
) -> None:
    """A local web page: drop photos, pick a style, download the sketches as PNG, SVG or ZIP."""
    from diffsketch.extractor import BACKENDS, ExtractError, extractor_device
    from diffsketch.extractor import serve as run_server

    with clean_errors():
        extractor_device(device)
        if backend not in BACKENDS:
            raise ExtractError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if not styles.is_dir():
            raise ExtractError(f"--styles {styles} is not a folder; write a style with `diffsketch export --style {styles}/NAME`")
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: listening on {host}: other computers on the network can use this page", err=True, fg=typer.colors.YELLOW)
    use_threads(threads)
    typer.echo(f"diffsketch page on http://{host}:{port}/ (styles from {styles}); Ctrl-C to stop")
    run_server(styles, host=host, port=port, device=device, backend=backend, max_upload_mb=max_upload_mb,
               max_pixels=int(max_megapixels * 1e6))  # fmt: skip
