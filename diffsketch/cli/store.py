"""`diffsketch inspect`: summarise, verify and repair a feature or pairs store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from diffsketch.cli.common import clean_errors, fail


def _verify_store(path: Path, repair: bool, progress: bool) -> None:
    """`inspect --verify` / `--repair`: list the damaged entries and arrays; exit status 1 when
    anything is damaged (with --repair: when anything is left that a rerun cannot redo)."""
    from diffsketch.store import integrity as verify

    with clean_errors():
        result = verify.verify(path, progress=progress)
        cleared = verify.repair(result) if repair else []
    found = "no damage" if result.ok else f"{len(result.problems)} damaged"
    typer.echo(f"store        {result.path}")
    typer.echo(f"verified     {result.entries} complete {result.kinds}, {result.chunks} chunks: {found}")
    width = max((len(p.array) for p in result.problems), default=0)
    for p in result.problems:
        where = "whole store" if p.entry is None else f"{result.kind} {p.entry}"
        where = "metadata" if p.kind == "metadata" else where
        typer.echo(f"  {where:<16} {p.array:<{width}}  {p.kind}: {p.detail}")
    if result.rebuilt:
        typer.echo(f"repaired     metadata rebuilt from the store's copies: {', '.join(result.rebuilt)}")
    if cleared:
        typer.echo(f"repaired     completion flag cleared for {result.kinds} {cleared}: rerun `{result.rerun}` with the "
                   "same settings (or `dvc repro`) to redo exactly them")  # fmt: skip
    errors = []
    if result.metadata and not repair:
        errors.append(f"the metadata is damaged ({', '.join(p.array for p in result.metadata)}): run `diffsketch "
                      f"inspect --repair {result.path}` to rebuild it")  # fmt: skip
    if repair and result.unrebuilt:
        errors.append(f"no copy is kept to rebuild {', '.join(p.array for p in result.unrebuilt)} from: make the store "
                      f"again (`{result.rerun} --overwrite`)")  # fmt: skip
    if result.damaged and not repair:
        errors.append(f"{len(result.damaged)} damaged {result.kinds} {result.damaged}: run `diffsketch inspect --repair "
                      f"{result.path}`, then `{result.rerun}` with the same settings redoes exactly them")  # fmt: skip
    if result.whole_store:
        errors.append(f"arrays written once for the whole store are damaged ({', '.join(p.array for p in result.whole_store)}), "
                      f"which no rerun redoes: make the store again (`{result.rerun} --overwrite`)")  # fmt: skip
    if errors:
        fail("; ".join(errors))


def inspect(
    store: Annotated[Path, typer.Argument(help="feature or pairs store (.zarr folder or fsspec URL)")],
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="read and decode every chunk of every completed entry and list what is missing or corrupt (exit status 1 if anything is)")
    ] = False,
    repair: Annotated[
        bool, typer.Option("--repair/--no-repair", help="verify, then clear the completion flag of the damaged entries, so that the next `sample` / `pairs` run redoes exactly them")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar while verifying")] = True,
) -> None:
    """Summarise a store: arrays, shapes, dtypes, completed entries, size on disk (--verify: check every chunk)."""
    from diffsketch.store import summary

    if verify or repair:
        _verify_store(store, repair, progress)
        return
    with clean_errors():
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
