"""The `diffsketch` command line: the Typer app is :data:`diffsketch.cli.main.app`, the ``diffsketch`` script.

Each module of this package holds one command group (see :mod:`diffsketch.cli.main`);
:mod:`diffsketch.cli.common` has what they share. This ``__init__`` imports nothing, so a DVC stage
script that runs one command (:func:`diffsketch.cli.common.run_stage`) loads only that command's code.
"""
