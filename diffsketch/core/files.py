"""Files: writing a folder of outputs all at once (build it beside the target, then swap it in), and
the short content hash that tells a resumed stage whether its input files changed."""

from __future__ import annotations

import hashlib
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


def file_hash(path: str | Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
