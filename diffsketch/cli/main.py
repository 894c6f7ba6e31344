"""The `diffsketch` command line: one Typer app over the command modules of this package.

Each command is a thin wrapper over the library, in the module of its group: the pipeline's stages
(:mod:`~diffsketch.cli.sample`, :mod:`~diffsketch.cli.analyze`, :mod:`~diffsketch.cli.prior`,
:mod:`~diffsketch.cli.train`, :mod:`~diffsketch.cli.pairs`, :mod:`~diffsketch.cli.distill`,
:mod:`~diffsketch.cli.eval_data`, :mod:`~diffsketch.cli.evaluate`), the extractor (:mod:`~diffsketch.cli.extractor`), the store
tools (:mod:`~diffsketch.cli.store`, :mod:`~diffsketch.cli.checkpoints`), ablations (:mod:`~diffsketch.cli.ablate`) and presets
(:mod:`~diffsketch.cli.preset`). Commands import the library inside their functions, so
``diffsketch --help`` imports no torch.
"""

from __future__ import annotations

import typer

from diffsketch.cli import (
    ablate,
    analyze,
    checkpoints,
    distill,
    eval_data,
    evaluate,
    extractor,
    pairs,
    preset,
    prior,
    sample,
    store,
    train,
)
from diffsketch.cli.common import HELP, HELP_STYLE, setup_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=HELP, **HELP_STYLE)
app.callback()(setup_logging)

app.command()(preset.preset)
app.command()(sample.sample)
app.command()(analyze.analyze)
app.command()(prior.prior)
app.command()(train.train)
app.command()(pairs.pairs)
app.command()(distill.distill)
app.command("eval-data")(eval_data.eval_data)
app.command()(evaluate.evaluate)
app.command()(evaluate.results)
app.command()(analyze.report)
app.command()(ablate.ablate)
app.command()(store.inspect)
app.command()(checkpoints.checkpoints)
app.command()(extractor.extract)
app.command()(extractor.export)
app.command()(extractor.serve)
