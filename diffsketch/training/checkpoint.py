"""Resumable checkpoints and the non-finite guard, shared by `train` and `distill`.

A checkpoint is one safetensors file, ``<folder>/<key>/checkpoint-<iteration>.safetensors``: named
tensors (module weights, optimiser moments, random-generator states) plus string metadata (the
iteration, the settings key and its record, anything JSON). Checkpoints live under their key
(:mod:`diffsketch.core.keys`), so a run with other settings starts its own subfolder and never
deletes another's: setting a parameter back resumes the earlier run. A run resumes from the latest
checkpoint at or below its requested iteration count, never from one past it, so lowering the
count gives exactly a fresh run of that length. It is written to ``<name>.tmp``, flushed to disk and renamed over
the final name, so a run killed at any moment (SIGKILL included) leaves either the previous
checkpoint or the new one, never a torn file; stale ``.tmp`` files are ignored and removed by the
next save. A checkpoint holding a NaN or inf is never written (:class:`NonFiniteError`).

:class:`NonFiniteGuard` decides, after the backward pass, whether an optimiser step may be taken:
a non-finite loss or gradient skips the step; ``limit`` consecutive skips stop the run with a
message naming the iteration and the likely causes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from diffsketch.core import DiffsketchError, ResultKey, __version__

log = logging.getLogger(__name__)

PATTERN = "checkpoint-*.safetensors"


class NonFiniteError(DiffsketchError, RuntimeError):
    """Training produced NaN/inf values it cannot recover from; the message names the iteration and causes."""


def _finite(tensor: torch.Tensor) -> bool:
    return not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all())


def nonfinite_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or inf."""
    return [name for name, t in tensors.items() if not _finite(t)]


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``module`` has a non-finite parameter or buffer (before writing it)."""
    bad = nonfinite_names(dict(module.state_dict()))
    if bad:
        raise NonFiniteError(
            f"{what} has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "refusing to write it. Lower the learning rate or use fp32 precision, and rerun"
        )


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    start = prefix + "."
    module.load_state_dict({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}, strict=True)


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    start = prefix + "."
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith(start):
            index, name = k[len(start) :].split(".", 1)
            state.setdefault(int(index), {})[name] = v.cpu() if name == "step" else v
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_tensor(generator: torch.Generator | None = None) -> torch.Tensor:
    """The state of ``generator`` (default: torch's global CPU generator) as a uint8 tensor."""
    return (generator.get_state() if generator is not None else torch.get_rng_state()).clone()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, iteration: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int = 2) -> Path:
    """Write ``tensors`` + ``meta`` atomically as the checkpoint of ``iteration``; keep the last ``keep``.

    Refuses (:class:`NonFiniteError`) when a tensor holds a NaN or inf: the last good checkpoint stays."""
    from safetensors.torch import save_file

    bad = nonfinite_names(tensors)
    if bad:
        raise NonFiniteError(
            f"iteration {iteration}: the checkpoint would hold non-finite values ({', '.join(bad[:3])}); not written, "
            "the previous checkpoint is kept. Lower the learning rate or use fp32 precision, and rerun to resume"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"checkpoint-{iteration:06d}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    meta = {"iteration": str(iteration), "version": __version__, **{k: str(v) for k, v in meta.items()}}
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)  # atomic: an interrupted save never replaces a good checkpoint
    _fsync_dir(folder)
    # keep the last `keep` checkpoints up to this one; later ones (a longer run with the same key) stay
    for old in [p for p in sorted(folder.glob(PATTERN)) if checkpoint_iteration(p) < iteration][: -(keep - 1) or None]:
        old.unlink()
    for stale in folder.glob(PATTERN + ".tmp"):
        stale.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device)), checkpoint_meta(path)


def checkpoint_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata() or {}


def checkpoint_iteration(path: Path) -> int:
    """The iteration in a checkpoint's file name.

    >>> checkpoint_iteration(Path("checkpoint-000040.safetensors"))
    40
    """
    return int(Path(path).name.removeprefix("checkpoint-").split(".")[0])


def latest_checkpoint(folder: Path, at_most: int | None = None) -> Path | None:
    """The checkpoint in ``folder`` with the highest iteration not above ``at_most`` (None: any)."""
    folder = Path(folder)
    found = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
    found = [p for p in found if at_most is None or checkpoint_iteration(p) <= at_most]
    return found[-1] if found else None


def keyed_folder(folder: Path, key: str) -> Path:
    """Where the checkpoints of the run with ``key`` live: ``folder/key``."""
    return Path(folder) / key


def other_keys(folder: Path, key: str) -> list[Path]:
    """Checkpoint subfolders of ``folder`` made with other keys, the most recently written first."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.is_dir() and p.name != key and any(p.glob(PATTERN))] if folder.is_dir() else []
    return sorted(found, key=lambda p: max(c.stat().st_mtime for c in p.glob(PATTERN)), reverse=True)


def resume_point(folder: Path, key: ResultKey, target: int, stage: str, overwrite: bool = False) -> tuple[Path, Path | None]:
    """The folder for the checkpoints of ``key`` and the checkpoint to resume from (None: start afresh).

    Resumes from the latest checkpoint of ``key`` at or below ``target`` iterations. When ``key`` has
    no checkpoint at all but other keys do, says once what changed (a setting, or an input file: that
    one at WARNING) and that those are kept. ``overwrite`` deletes every checkpoint in ``folder`` first.
    """
    folder = Path(folder)
    if overwrite and folder.exists():
        log.info("%s: --overwrite: deleting every checkpoint in %s", stage, folder)
        shutil.rmtree(folder)
    own = keyed_folder(folder, key.digest)
    checkpoint = latest_checkpoint(own, at_most=target)
    beyond = latest_checkpoint(own)
    if beyond is not None and beyond != checkpoint:
        log.info("%s: %s is past the requested %d iterations; it is kept, and %s", stage, beyond.name, target,
                 f"the run resumes from {checkpoint.name}" if checkpoint else "the run starts from the beginning")  # fmt: skip
    others = other_keys(folder, key.digest)
    if beyond is None and others:  # no checkpoint of this key at all: say why the others are not used
        what, files = key.change_summary(checkpoint_meta(latest_checkpoint(others[0])).get("record"))
        log.log(
            logging.WARNING if files else logging.INFO,
            "%s: not resuming the checkpoints in %s: %s. They are kept (setting the parameters back resumes them; "
            "`diffsketch checkpoints --remove` deletes unused ones)",
            stage, others[0], what,
        )  # fmt: skip
    return own, checkpoint


@dataclass(frozen=True)
class KeptRun:
    """One key's checkpoints in a checkpoint folder."""

    folder: Path
    iterations: int  # the latest checkpoint's iteration
    bytes: int


def kept_runs(folder: Path) -> list[KeptRun]:
    """Every key's checkpoint subfolder in ``folder``, with its latest iteration and size on disk."""
    folder = Path(folder)
    runs = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        files = [p for p in sub.rglob("*") if p.is_file()]
        latest = latest_checkpoint(sub)
        runs.append(KeptRun(sub, checkpoint_iteration(latest) if latest else 0, sum(p.stat().st_size for p in files)))
    return runs


def trim_live(live_dir: Path, start: int) -> None:
    """Drop logged dvclive rows from iterations at or after ``start`` (the resumed run redoes them)."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        header, rows = lines[:1], lines[1:]
        column = header[0].split("\t").index("step") if header else 0
        kept = [r for r in rows if int(r.split("\t")[column]) < start]
        tsv.write_text("\n".join(header + kept) + "\n")


class NonFiniteGuard:
    """Skip optimiser steps whose loss or gradients are NaN/inf; stop after ``limit`` iterations in a row
    with a skipped step.

    ``causes``: the likely causes named in the stopping message (stage-specific). ``skipped`` counts
    skipped steps (a stage with two optimisers can skip two per iteration)."""

    def __init__(self, limit: int, stage: str, causes: str):
        self.limit, self.stage, self.causes = limit, stage, causes
        self.skipped = 0  # steps, in total
        self.consecutive = 0  # iterations in a row with a skipped step
        self.last_bad = -2

    def state(self) -> str:
        return json.dumps(dict(skipped=self.skipped, consecutive=self.consecutive, last_bad=self.last_bad))

    def load(self, state: str | None) -> None:
        if state:
            values = json.loads(state)
            self.skipped, self.consecutive, self.last_bad = values["skipped"], values["consecutive"], values["last_bad"]

    def ok(self, iteration: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> bool:
        """True if the step may be taken; otherwise counts and logs the skip (and raises after ``limit``).

        One host synchronisation per call: the loss and every gradient's largest absolute value
        (``torch._foreach_norm`` with ``ord=inf``: NaN if the gradient holds a NaN, inf if it holds an
        inf, never an overflow of a finite gradient) are checked together; the loss and gradients are
        told apart only for the warning of a skipped step."""
        loss = loss.detach().float().reshape(())
        grads = [p.grad.detach() for p in parameters if p.grad is not None]
        peaks = [n.float() for n in torch._foreach_norm(grads, ord=float("inf"))] if grads else []
        if bool(torch.isfinite(torch.stack([loss, *peaks])).all()):
            return True
        bad = "loss" if not bool(torch.isfinite(loss)) else "gradient"
        self.skipped += 1
        if iteration != self.last_bad:
            self.consecutive = self.consecutive + 1 if iteration == self.last_bad + 1 else 1
            self.last_bad = iteration
        log.warning("%s iteration %d: non-finite %s, step skipped (%d skipped so far)", self.stage, iteration, bad, self.skipped)
        if self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.stage} stopped at iteration {iteration}: a non-finite (NaN/inf) {bad} in {self.consecutive} "
                f"iterations in a row ({self.skipped} steps skipped in all). Likely causes: {self.causes}. No checkpoint "
                "or model with bad weights was written; fix the cause and rerun to resume from the last checkpoint"
            )
        return False


def open_live(folder: Path, resume: bool):
    """A dvclive logger that writes only its folder (the stage's dvc.yaml declares the plots).

    dvclive 3.49 raises ``SCMError: Empty git repo`` inside a git repo without commits (a fresh
    ``git init && dvc init && dvc repro``; treeverse/dvclive#522); such a repo is treated like
    one without git.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError:
                self._exp_name = self._exp_name or "train"
                self._dvc_file = self._init_dvc_file()
                self._save_dvc_exp = False

    return _Live(str(folder), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
