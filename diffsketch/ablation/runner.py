"""The paper's ablations as DVC experiments: ``diffsketch ablate``.

The rows live in ``presets/ablations.yaml``: a name, what the row tests, and the params it changes
on top of ``params.yaml`` as it is (dotted keys). :func:`run_ablation` checks the repository and
every row against the params schema before anything runs, then queues each row that has no result
yet as a named DVC experiment (``dvc exp run --queue -n ablate-NAME -S params.yaml:KEY=VALUE``) and
runs the queue (``dvc queue start --jobs N``, waiting for its rows: :func:`run_queue`). DVC reruns only the stages a row changes (a
row that changes ``train`` reuses ``sample`` and ``analyze`` from the committed ``dvc.lock``).

A row counts as done when an experiment ``ablate-NAME`` of the current commit ran with the params
the row stands for now (current ``params.yaml`` plus its overrides, compared after validation) and
has the evaluation's metrics; such rows are skipped, so a second ``diffsketch ablate`` runs
nothing. A row whose params changed since (an edit of ``params.yaml`` or of the rows file) is run
again, replacing its experiment.

:func:`collect` reads each done row's results from its experiment commit: the evaluation's means
and per-image scores, the grid of sketches (``reports/eval/grid``) and the dvclive curves of
``train`` and ``distill``. :mod:`diffsketch.ablation.report` renders them.

DVC experiments need a git repository with the code committed (they are built from ``HEAD`` plus
the changes to tracked files); :func:`check_repo` says what is missing before anything is queued.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffsketch.core import DiffsketchError, ParamsError, apply_overrides, parse_params

log = logging.getLogger(__name__)

ROWS_FILE = Path("presets/ablations.yaml")
PREFIX = "ablate-"  # DVC experiment name = PREFIX + row name
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")
EVAL_DIR, TRAIN_DIR, DISTILL_DIR = "reports/eval", "reports/train", "reports/distill"
METHOD = "student"  # the method of the evaluation that an ablation row changes


class AblationError(DiffsketchError, RuntimeError):
    """The repository, the rows or a run is not usable; the message says what to do."""


@dataclass(frozen=True)
class Row:
    """One ablation row: its name, what it tests and the params it changes."""

    name: str
    description: str
    overrides: dict[str, Any]

    @property
    def experiment(self) -> str:
        return PREFIX + self.name

    def set_params(self) -> list[str]:
        """The overrides as ``KEY=VALUE`` (JSON values, which YAML reads back as they were)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.overrides.items()]


def load_rows(path: str | Path = ROWS_FILE, only: list[str] | None = None) -> list[Row]:
    """The rows of ``path`` (all, or those named in ``only``, in the file's order)."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"ablation rows {path} not found; run from the project root or pass --rows PATH")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise AblationError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not data:
        raise AblationError(f"{path} must map row names to {{description, set}}")
    rows = []
    for name, entry in data.items():
        where = f"{path}: row {name!r}"
        if not isinstance(name, str) or not NAME.match(name):
            raise AblationError(f"{where}: a row name is lower-case letters, digits and dashes (it names a DVC experiment)")
        if not isinstance(entry, dict) or set(entry) - {"description", "set"} or not isinstance(entry.get("set", {}), dict):
            raise AblationError(f"{where}: expected a mapping with 'description' (text) and 'set' (dotted key: value)")
        overrides = entry.get("set") or {}
        if any(not isinstance(key, str) or "." not in key for key in overrides):
            raise AblationError(f"{where}: the keys of 'set' are dotted params keys such as train.cdst")
        rows.append(Row(name, str(entry.get("description", "")), dict(overrides)))
    if only:
        unknown = [name for name in only if name not in {r.name for r in rows}]
        if unknown:
            raise AblationError(f"no row {', '.join(map(repr, unknown))} in {path}; rows: {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in only]
    return rows


def expected_params(raw: dict, row: Row) -> dict:
    """The validated params (as JSON data) that ``row`` stands for on top of the raw ``params.yaml`` data."""
    try:
        return parse_params(apply_overrides(raw, row.set_params()), f"params.yaml with ablation row {row.name!r}").model_dump(mode="json")
    except ParamsError as err:
        raise AblationError(f"{err}\n(fix the row's 'set' in the rows file, or params.yaml)") from None


def read_raw_params(path: Path) -> dict:
    from diffsketch.core import load_params

    load_params(path)  # a clean message for a missing or invalid file
    return yaml.safe_load(path.read_text()) or {}


# --- git and DVC -----------------------------------------------------------------------------------


def _run(root: Path, *cmd: str, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=root, capture_output=capture, text=capture, check=False)


def _git(root: Path, *args: str) -> str:
    done = _run(root, "git", *args)
    if done.returncode != 0:
        raise AblationError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout


def _git_bytes(root: Path, rev: str, path: str) -> bytes | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, check=False)
    return done.stdout if done.returncode == 0 else None


def _git_files(root: Path, rev: str, folder: str) -> list[str]:
    return [line for line in _git(root, "ls-tree", "-r", "--name-only", rev, "--", folder).splitlines() if line]


def _dvc(root: Path, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return _run(root, sys.executable, "-m", "dvc", *args, capture=capture)


def check_repo(root: str | Path) -> list[str]:
    """Refuse a folder where DVC experiments cannot run; returns warnings for what makes them slow or partial."""
    root = Path(root)
    if _run(root, "git", "rev-parse", "--is-inside-work-tree").returncode != 0:
        raise AblationError(
            f"{root} is not a git repository, and DVC experiments need one: git init && dvc init && git add -A && git commit -m start"
        )
    if _run(root, "git", "rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        raise AblationError(f"{root} has no commit yet; DVC experiments are built from HEAD: git add -A && git commit -m start")
    if not (root / ".dvc").is_dir():
        raise AblationError(f"{root} is not a DVC repository: dvc init && git commit -m 'dvc init'")
    if not (root / "dvc.yaml").is_file():
        raise AblationError(f"{root} has no dvc.yaml: run diffsketch ablate from the project root")
    warnings = []
    if not _git(root, "ls-files", "dvc.lock").strip():
        warnings.append(
            "dvc.lock is not committed, so every row reruns the whole pipeline from sampling; run dvc repro and "
            "commit dvc.lock first to let rows reuse the stages they do not change"
        )
    untracked = [p for p in _git(root, "ls-files", "--others", "--exclude-standard", "--", "diffsketch", "stages").splitlines() if p]
    if untracked:
        warnings.append(f"untracked files are left out of the experiments (git add them): {', '.join(untracked[:5])}")
    return warnings


@dataclass
class Experiment:
    """One DVC experiment of the current commit, as ``dvc exp show`` lists it."""

    name: str
    rev: str | None
    state: str  # success | failed | queued | running
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def head_commit(root: str | Path) -> str:
    return _git(Path(root), "rev-parse", "HEAD").strip()


def experiments(root: str | Path) -> dict[str, Experiment]:
    """The experiments of ``HEAD``, by name (``dvc exp show --json``)."""
    root = Path(root)
    head = head_commit(root)
    done = _dvc(root, "exp", "show", "--json")
    if done.returncode != 0:
        raise AblationError(f"dvc exp show failed: {done.stderr.strip() or done.stdout.strip()}")
    found = {}
    for baseline in json.loads(done.stdout or "[]"):
        if baseline.get("rev") != head:
            continue
        for entry in baseline.get("experiments") or []:
            revs = entry.get("revs") or [{}]
            data = revs[0].get("data") or {}
            executor = entry.get("executor") or {}
            state = executor.get("state") or ("success" if data and not revs[0].get("error") else "failed")
            name = entry.get("name") or revs[0].get("name")
            if name:
                found[name] = Experiment(name, data.get("rev") or revs[0].get("rev"), state,
                                         (data.get("params") or {}).get("params.yaml", {}).get("data") or {},
                                         {path: m.get("data") or {} for path, m in (data.get("metrics") or {}).items()})  # fmt: skip
    return found


def status(row: Row, expected: dict, found: dict[str, Experiment]) -> str:
    """``done``, ``pending`` (queued or running), ``stale`` (ran with other params, or failed) or ``new``."""
    exp = found.get(row.experiment)
    if exp is None:
        return "new"
    if exp.state in ("queued", "running"):
        return "pending"
    if exp.state != "success" or METHOD not in exp.metrics.get(f"{EVAL_DIR}/metrics.json", {}):
        return "stale"
    try:
        ran_with = parse_params(exp.params).model_dump(mode="json")
    except ParamsError:
        return "stale"
    return "done" if ran_with == expected else "stale"


def plan(root: str | Path, rows: list[Row], params_path: Path) -> dict[str, str]:
    """Each row's status (see :func:`status`), after checking every row against the schema."""
    root = Path(root)
    raw = read_raw_params(root / params_path)
    expected = {row.name: expected_params(raw, row) for row in rows}
    found = experiments(root)
    return {row.name: status(row, expected[row.name], found) for row in rows}


WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")
POLL_SECONDS = 5.0


def _workers(root: Path) -> int:
    found = WORKERS.search(_dvc(root, "queue", "status").stdout or "")
    return int(found.group(1)) + int(found.group(2)) if found else 0


def run_queue(root: Path, names: list[str], jobs: int, echo=print, poll: float = POLL_SECONDS) -> None:
    """Start the queue's workers and wait until none of ``names`` is queued or running.

    A DVC queue worker can exit while tasks are still queued (treeverse/dvc#10398: ``dvc exp run
    --run-all`` then waits forever), so the workers are started again whenever tasks wait with none
    alive. Each experiment's end is echoed as it happens (its log: ``dvc queue logs NAME``).
    """
    _dvc(root, "queue", "start", "--jobs", str(jobs))
    reported: set[str] = set()
    stalls, last = 0, None
    while True:
        time.sleep(poll)
        found = experiments(root)
        waiting = [n for n in names if n not in found or found[n].state in ("queued", "running")]
        for name in names:
            if name not in waiting and name not in reported:
                reported.add(name)
                echo(f"{name}: {found[name].state} ({len(reported)}/{len(names)})")
        if not waiting:
            return
        if _workers(root) == 0:
            stalls = stalls + 1 if waiting == last else 0
            if stalls >= 3:
                raise AblationError(f"DVC's queue does not run {', '.join(waiting)}; see dvc queue status and dvc queue logs NAME")
            log.info("no queue worker is alive with %d experiment(s) waiting: starting the workers again", len(waiting))
            _dvc(root, "queue", "start", "--jobs", str(jobs))
        last = waiting


def run_ablation(root: str | Path, rows: list[Row], jobs: int = 1, params_path: Path = Path("params.yaml"), echo=print) -> dict[str, str]:
    """Queue and run every row without a current result; returns each row's status before the run."""
    root = Path(root)
    if jobs < 1:
        raise AblationError(f"--jobs must be at least 1, got {jobs}")
    for warning in check_repo(root):
        echo(f"warning: {warning}")
    before = plan(root, rows, params_path)
    todo = [row for row in rows if before[row.name] in ("new", "stale")]
    for row in rows:
        echo(f"{row.experiment}: {dict(done='done, skipped', pending='already queued', stale='rerun', new='queued')[before[row.name]]}")
    for row in todo:
        args = ["exp", "run", "--queue", "-n", row.experiment, *(["-f"] if before[row.name] == "stale" else [])]
        for item in row.set_params():
            args += ["-S", f"{params_path.as_posix()}:{item}"]
        done = _dvc(root, *args)
        if done.returncode != 0:
            raise AblationError(f"could not queue {row.experiment}: {(done.stderr or done.stdout).strip()}")
    if not todo and not any(s == "pending" for s in before.values()):
        echo("nothing to run: every row has its result (diffsketch ablate --report writes the table)")
        return before
    echo(f"running {len(todo)} experiment(s) with {jobs} job(s): dvc queue start --jobs {jobs}")
    run_queue(root, [row.experiment for row in todo], jobs, echo)
    after = plan(root, rows, params_path)
    failed = [row.experiment for row in rows if after[row.name] != "done"]
    if failed:
        raise AblationError(
            f"{len(failed)} row(s) did not finish: {', '.join(failed)}; see why with dvc queue logs NAME, "
            "fix it, and run diffsketch ablate again (finished rows are kept)"
        )
    return before


# --- results ----------------------------------------------------------------------------------------


@dataclass
class RowResult:
    """What the report shows of one row: scores, sketches and curves, read from its experiment commit."""

    row: Row
    rev: str
    means: dict[str, float]  # the student's mean score per metric
    spread: dict[str, float]  # their standard deviation over the test images
    images: int
    sketches: list[tuple[str, bytes, bytes]]  # (photo name, photo PNG, student sketch PNG)
    curves: dict[str, list[tuple[int, float]]]  # "train: train/loss" -> [(step, value)], "distill: holdout/l1", ...
    extra: dict[str, float]  # other final numbers: the distillation's held-out scores


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def _curves(root: Path, rev: str, folder: str, prefix: str) -> dict[str, list[tuple[int, float]]]:
    curves = {}
    base = f"{folder}/plots/metrics/"
    for path in _git_files(root, rev, base):
        if not path.endswith(".tsv"):
            continue
        table = list(csv.DictReader(io.StringIO(_git_bytes(root, rev, path).decode()), delimiter="\t"))
        name = path[len(base) : -len(".tsv")]
        leaf = name.rsplit("/", 1)[-1]
        curves[f"{prefix}: {name}"] = [(int(r["step"]), float(r[leaf])) for r in table if r.get(leaf) not in (None, "")]
    return curves


def collect(root: str | Path, rows: list[Row]) -> list[RowResult]:
    """The results of every done row (rows without one are left out)."""
    root = Path(root)
    found = experiments(root)
    results = []
    for row in rows:
        exp = found.get(row.experiment)
        if exp is None or exp.rev is None or exp.state != "success":
            continue
        per_image = _git_bytes(root, exp.rev, f"{EVAL_DIR}/per_image.csv")
        means = exp.metrics.get(f"{EVAL_DIR}/metrics.json", {}).get(METHOD)
        if per_image is None or not means:
            continue
        mine = [r for r in csv.DictReader(io.StringIO(per_image.decode())) if r["method"] == METHOD]
        spread = {k: _std([float(r[k]) for r in mine]) for k in means}
        sketches = []
        cells = sorted({p.split("/")[3] for p in _git_files(root, exp.rev, f"{EVAL_DIR}/grid/")})
        for cell in cells:
            photo = _git_bytes(root, exp.rev, f"{EVAL_DIR}/grid/{cell}/photo.png")
            sketch = _git_bytes(root, exp.rev, f"{EVAL_DIR}/grid/{cell}/{METHOD}.png")
            if photo and sketch:
                sketches.append((cell.split("-", 1)[-1], photo, sketch))
        distill = exp.metrics.get(f"{DISTILL_DIR}/metrics.json", {})
        extra = {f"distill {k}": float(v) for k, v in _flat(distill).items() if k.startswith("holdout")}
        curves = {**_curves(root, exp.rev, TRAIN_DIR, "train"), **_curves(root, exp.rev, DISTILL_DIR, "distill")}
        results.append(RowResult(row, exp.rev, {k: float(v) for k, v in means.items()}, spread, len(mine), sketches, curves, extra))
    return results


def _flat(data: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out
