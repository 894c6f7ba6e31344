"""Stores kept under their key: work made with other settings is set aside, never deleted.

When ``sample`` or ``pairs`` finds a store at its output made with another key (other settings,
another model, other inputs: :mod:`diffsketch.core.keys`), it moves that store to
``<out>.kept/<key>`` and starts the store of the new key. When the settings are set back, the kept
store of that key is moved back and resumed, so no finished trajectory or pair is lost to a change
that was undone. ``diffsketch checkpoints`` lists kept stores with their size; ``--remove`` deletes them.
``--overwrite`` (an explicit choice) deletes instead of keeping.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "features.zarr"
    >>> out.mkdir()
    >>> set_aside(out, "0123456789abcdef").relative_to(out.parent).as_posix()
    'features.zarr.kept/0123456789abcdef'
    >>> take_back(out, "0123456789abcdef"), out.is_dir()
    (True, True)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from diffsketch.core import ResultKey
from diffsketch.store.zarr_store import StoreError, is_url

log = logging.getLogger(__name__)


def kept_folder(out: str | Path) -> Path:
    """Where stores of other keys than the current one are kept: ``<out>.kept``."""
    out = Path(out)
    return out.with_name(out.name + ".kept")


def set_aside(out: str | Path, key: str) -> Path:
    """Move the store at ``out`` (made with ``key``) to ``<out>.kept/<key>``; returns the new place.

    A store already kept under that key (an older copy of the same work) is replaced."""
    if is_url(out):
        raise StoreError(
            f"{out} was made with other settings, and a remote store cannot be set aside; pass --overwrite to "
            "replace it, or choose another --out"
        )
    target = kept_folder(out) / str(key)
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(out).rename(target)
    return target


def take_back(out: str | Path, key: str) -> bool:
    """Move the store kept under ``key`` back to ``out`` (which must not exist); False when none is kept."""
    if is_url(out):
        return False
    kept = kept_folder(out) / str(key)
    if not kept.is_dir() or Path(out).exists():
        return False
    kept.rename(out)
    if not any(kept_folder(out).iterdir()):
        kept_folder(out).rmdir()
    return True


def kept_stores(out: str | Path) -> list[tuple[Path, int]]:
    """The stores kept beside ``out``, each with the bytes of its files."""
    folder = kept_folder(out)
    if is_url(out) or not folder.is_dir():
        return []
    return [(p, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())) for p in sorted(folder.iterdir()) if p.is_dir()]


def replace_other_key(root, out, key: ResultKey, overwrite: bool, workers, made: str = "made") -> None:
    """The store ``root`` at ``out`` was made with another key: say what changed (an input file at WARNING)
    and set it aside under its old key; with ``overwrite`` leave it to be replaced. Every process of the
    run calls this; process 0 moves the store. Returns None: the caller creates the store of ``key``."""
    old = root.attrs.get("fingerprint")
    what, files = key.change_summary(root.attrs.get("key_record"))
    if overwrite:
        log.warning("%s was %s with other settings (%s): replacing it (--overwrite)", out, made, what)
    else:
        log.log(
            logging.WARNING if files else logging.INFO,
            "%s was %s with other settings (%s): not resuming it; it is kept in %s (setting the parameters "
            "back resumes it; `diffsketch checkpoints --remove` deletes unused ones)",
            out, made, what, kept_folder(out) / str(old),
        )  # fmt: skip
        workers.barrier()  # every process has read the old store before process 0 moves it
        if workers.main:
            set_aside(out, str(old))
    return None


def resume_kept(out, key: ResultKey, workers, what: str, *, wanted: bool) -> None:
    """Every process of a run calls this, between the store check and opening the store: where a store
    is ``wanted`` (none of ``key`` is at ``out``, and no --overwrite), process 0 takes back the one kept
    under ``key``; the barriers around it let every process then open what is there."""
    workers.barrier()  # process 0 has set aside the store of other settings before it takes one back
    if wanted and workers.main and take_back(out, key.digest):
        log.info("%s: resuming the %s kept for these settings", out, what)
    workers.barrier()
