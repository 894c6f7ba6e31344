"""What a result depends on: the one rule behind every stage's key.

A stage's key (the ``fingerprint`` of a feature or pairs store, the ``key`` of a checkpoint) is
made from three things and nothing else:

1. the **settings that change numbers**, after ``auto`` is resolved (the dtype a run really uses,
   the CLIP and LPIPS networks really loaded);
2. the **identity of every input by content**: a hash of each input file, of each weight file of a
   local model, or the resolved revision of a hub model, never a path;
3. nothing that cannot change a number: output paths, progress, logging and checkpoint intervals,
   batch sizes (every item has its own seeds), worker counts, threads (:data:`NEUTRAL`), and not
   the iteration count of a resumable run (:data:`PROGRESS`: checkpoints up to it are reused).

So changing a neutral setting reuses every finished piece of work, and changing anything that
changes numbers starts a new key, under which work is kept apart from the old one's.

Example:
    >>> from pydantic import BaseModel
    >>> class Sample(BaseModel):
    ...     steps: int = 50
    ...     batch_size: int = 4
    >>> a = result_key({"sample": Sample()}, inputs={"prompts": "0123abcd"})
    >>> b = result_key({"sample": Sample(batch_size=1)}, inputs={"prompts": "0123abcd"})
    >>> a.digest == b.digest  # the batch size is neutral
    True
    >>> c = result_key({"sample": Sample(steps=20)}, inputs={"prompts": "0123abcd"})
    >>> c.changes(a.record)
    ['sample.steps 50 -> 20']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# Settings that cannot change a result's numbers, and why. They are left out of every key and out of
# every stage's `params:` in dvc.yaml (tests/test_keys.py checks both), so changing them reruns nothing.
NEUTRAL: dict[str, str] = {
    "model.device": "where the model runs; results agree across devices up to float rounding, so work carries over",
    "model.compile": "torch.compile changes speed, not results",
    "sample.batch_size": "every trajectory draws its noise from its own seed",
    "pairs.batch_size": "every pair draws its noise and condition from its own seed",
    "train.checkpoint_every": "how often a resumable checkpoint is written",
    "train.sample_every": "how often a sample grid is logged",
    "train.max_skips": "when a run of non-finite steps stops training; a finished run is unaffected",
    "distill.eval_every": "how often the held-out pairs are scored",
    "distill.checkpoint_every": "how often a resumable checkpoint is written",
    "distill.max_skips": "when a run of non-finite steps stops distillation; a finished run is unaffected",
    "analyze.device": "where the PCA runs",
    "threads": "how many CPU threads torch uses; results agree across thread counts up to float rounding",
    "launch.processes": "how many worker processes share sample and pairs",
    "launch.args": "torchrun arguments",
}


# Settings that change the result but not the key: how far a resumable run goes. A checkpoint at or
# below the requested count is reused, never one past it; the stage reruns when they change.
PROGRESS: dict[str, str] = {
    "train.iterations": "where training stops; checkpoints up to it are reused, never ones past it",
    "distill.iterations": "where distillation stops; checkpoints up to it are reused, never ones past it",
}


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (settings as JSON values, models dumped first).

    >>> flatten("train", {"lr": 0.1, "cdst": {"on": True}})
    {'train.lr': 0.1, 'train.cdst.on': True}
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, item in value.items():
            out.update(flatten(f"{prefix}.{name}" if prefix else str(name), item))
        return out
    return {prefix: value}


@dataclass(frozen=True)
class ResultKey:
    """The settings and input identities one result depends on, and their digest."""

    settings: dict[str, Any]
    inputs: dict[str, str]

    @property
    def record(self) -> str:
        """Settings and inputs as JSON, stored beside the result so a later change can be named."""
        return json.dumps({"settings": self.settings, "inputs": self.inputs}, sort_keys=True)

    @property
    def digest(self) -> str:
        """16 hex digits of the SHA-256 of :attr:`record`."""
        return hashlib.sha256(self.record.encode()).hexdigest()[:16]

    def changes(self, old_record: str | None) -> list[str]:
        """What differs from an earlier key's :attr:`record`, one phrase per setting or input
        (``train.lr 0.001 -> 0.002``, ``changed file unet/diffusion_pytorch_model.safetensors``)."""
        try:
            old = json.loads(old_record) if old_record else None
        except (TypeError, ValueError):
            old = None
        if not isinstance(old, dict):
            return ["made by an older version of diffsketch (no record of its settings)"]
        found = []
        before, after = old.get("settings", {}), self.settings
        for name in sorted(set(before) | set(after)):
            if before.get(name, "<unset>") != after.get(name, "<unset>"):
                found.append(f"{name} {_short(before.get(name, '<unset>'))} -> {_short(after.get(name, '<unset>'))}")
        before, after = old.get("inputs", {}), self.inputs
        for name in sorted(set(before) | set(after)):
            if name not in before:
                found.append(f"new input {name}")
            elif name not in after:
                found.append(f"input {name} no longer used")
            elif before[name] != after[name]:
                found.append(f"changed file {name}" if "/" in name or "." in name else f"changed input {name}")
        return found

    def change_summary(self, old_record: str | None, limit: int = 6) -> tuple[str, bool]:
        """:meth:`changes` as one phrase (at most ``limit`` named), and whether an input changed (a file
        replaced under the same name: worth a warning, unlike a setting the user changed on purpose).

        >>> new = ResultKey({"a": 2}, {"model/unet.safetensors": "ff"})
        >>> new.change_summary(ResultKey({"a": 1}, {"model/unet.safetensors": "00"}).record)
        ('a 1 -> 2; changed file model/unet.safetensors', True)
        """
        found = self.changes(old_record)
        text = "; ".join(found[:limit]) + (f" and {len(found) - limit} more" if len(found) > limit else "")
        return text, any(c.startswith(("changed file", "changed input")) for c in found)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def result_key(
    sections: Mapping[str, Any],
    *,
    resolved: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    inputs: Mapping[str, str] | None = None,
) -> ResultKey:
    """The key of a result made from the settings ``sections`` and the ``inputs``.

    Args:
        sections: ``{"sample": params.sample, ...}`` (config models or mappings), flattened to
            ``section.name`` settings.
        resolved: settings whose ``auto`` (or path) value is replaced by what the run really uses,
            e.g. ``{"model.dtype": "float32", "losses.clip_model": "tiny"}``.
        drop: further settings to leave out: input paths (their content is in ``inputs``) and
            settings another input already covers. Every :data:`NEUTRAL` and :data:`PROGRESS`
            setting is always left out.
        inputs: content identities (:func:`content_hash`, a hub revision) by name.

    >>> key = result_key({"model": {"dtype": "auto", "device": "cuda"}}, resolved={"model.dtype": "float16"})
    >>> key.settings
    {'model.dtype': 'float16'}
    """
    settings = flatten("", dict(sections))
    settings.update(resolved or {})
    for name in [*NEUTRAL, *PROGRESS, *drop]:
        settings.pop(name, None)
        for sub in [s for s in settings if s.startswith(name + ".")]:
            settings.pop(sub)
    return ResultKey(dict(sorted(settings.items())), dict(sorted((inputs or {}).items())))


@lru_cache(maxsize=4096)
def _hash_cached(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def content_hash(path: str | Path) -> str:
    """16 hex digits of a file's SHA-256, or of a folder's files (relative names and contents).

    A file is hashed once per process while its size and modification time stay the same.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> _ = Path(folder, "a.txt").write_text("hello")
    >>> content_hash(Path(folder, "a.txt")) == hashlib.sha256(b"hello").hexdigest()[:16]
    True
    """
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{content_hash(file)}\0".encode())
        return digest.hexdigest()[:16]
    stat = path.stat()
    return _hash_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def file_inputs(files: Mapping[str, str | Path | None]) -> dict[str, str]:
    """:func:`content_hash` of each named file or folder that exists (None and missing ones are left out:
    a missing input is an error the stage reports before any key is needed).

    >>> file_inputs({"none": None})
    {}
    """
    return {name: content_hash(path) for name, path in files.items() if path is not None and Path(path).exists()}
