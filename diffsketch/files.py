"""Writing a folder of outputs all at once: build it beside the target, then swap it in."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_folder(out: str | Path):
    """Yield an empty staging folder next to ``out``; on success it replaces ``out`` as a whole.

    If the body raises, ``out`` is left as it was and the staging folder is removed, so a failed
    run never leaves half a set of outputs behind.
    """
    out = Path(out)
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
