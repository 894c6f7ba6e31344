"""The paper's ablations as DVC experiments: ``diffsketch ablate``.

The rows live in ``presets/ablations.yaml``: a name, what the row tests, and the params it changes
on top of ``params.yaml`` as it is (dotted keys). Each row runs once per training seed
(:class:`Run`): seed 0 is ``params.yaml``'s seeds (experiment ``ablate-NAME``), seed ``s`` adds
``s`` to ``train.seed``, ``pairs.seed`` and ``distill.seed`` (experiment ``ablate-NAME-seedS``).

:func:`run_ablation` checks the repository and every row against the params schema before
anything runs, then runs each experiment without a result, one after the other, with
``dvc exp run --temp -n NAME -S params.yaml:KEY=VALUE`` (:func:`run_experiment`; not DVC's
queue, whose worker can die and leave the caller waiting). It echoes each experiment's stages as
they start (``[i/n] NAME: stage train (1m02s)``), keeps its whole output in
``.dvc/tmp/ablate/NAME.log``, and returns when the last one ends; a failed one is named with its
log, the others still run, and the call then raises. DVC reruns only the stages a row changes (a
row that changes ``train`` reuses ``sample`` and ``analyze`` from the committed ``dvc.lock``).

An experiment counts as done when ``ablate-NAME[-seedS]`` of the current commit ran with the params
it stands for (the current ``params.yaml`` plus the row's overrides and the seed, compared after
validation) and has the evaluation's metrics; such experiments are skipped, so a second
``diffsketch ablate`` runs only what is unfinished. One whose params differ (an edit of
``params.yaml`` or of the rows file) is removed (``dvc exp remove``) and run again. (``dvc exp run
-f`` would replace it too, but it also forces every stage to run again.)

:func:`collect` reads each row's results from its done experiments: the per-image scores of the
generator and the student (``reports/eval/per_image.csv``), gathered into a mean and a 95 %
t-interval per metric (:func:`row_score`), the grid of sketches (``reports/eval/grid``) and the
dvclive curves of ``train`` and ``distill``. :mod:`diffsketch.ablation.report` renders them.

DVC experiments need a git repository with the code committed (they are built from ``HEAD`` plus
the changes to tracked files); :func:`check_repo` says what is missing before anything runs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import signal
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


SEED_KEYS = ("train.seed", "pairs.seed", "distill.seed")  # what a training seed changes in a row


@dataclass(frozen=True)
class Run:
    """One experiment: a row at one training seed (0 = the seeds of ``params.yaml``; seed ``s`` adds ``s`` to each of :data:`SEED_KEYS`)."""

    row: Row
    seed: int = 0

    @property
    def experiment(self) -> str:
        """``ablate-ROW`` for seed 0, ``ablate-ROW-seedS`` for the others."""
        return self.row.experiment + (f"-seed{self.seed}" if self.seed else "")

    def set_params(self, raw: dict) -> list[str]:
        """The row's overrides plus, for seed ``s`` > 0, each of :data:`SEED_KEYS` shifted by ``s`` from its value in ``raw`` params (0 if unset).

        Example:
            >>> Run(Row("wo-l1", "", {"losses.l1": 0}), 2).set_params({"train": {"seed": 5}})
            ['losses.l1=0', 'train.seed=7', 'pairs.seed=2', 'distill.seed=2']
        """
        items = self.row.set_params()
        if self.seed:
            for key in SEED_KEYS:
                section, leaf = key.split(".")
                base = self.row.overrides.get(key, (raw.get(section) or {}).get(leaf, 0))
                items = [i for i in items if not i.startswith(key + "=")] + [f"{key}={int(base) + self.seed}"]
        return items


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


def expected_params(raw: dict, row: Row | Run) -> dict:
    """The validated params (as JSON data) that ``row`` (or one seed's run of it) stands for on top of the raw ``params.yaml`` data."""
    run = row if isinstance(row, Run) else Run(row)
    row = run.row
    try:
        return parse_params(apply_overrides(raw, run.set_params(raw)), f"params.yaml with ablation row {row.name!r}").model_dump(mode="json")
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


DVC = [sys.executable, "-m", "dvc"]  # the DVC command (tests put a fake in its place)


def _dvc(root: Path, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
    return _run(root, *DVC, *args, capture=capture)


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


def status(row: Row | Run, expected: dict, found: dict[str, Experiment]) -> str:
    """``done``, ``pending`` (queued or running in DVC's queue), ``stale`` (ran with other params, or failed) or ``new``."""
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


def plan(root: str | Path, runs: list[Run], params_path: Path) -> dict[str, str]:
    """Each experiment's status by name (see :func:`status`), after checking every row against the schema."""
    root = Path(root)
    raw = read_raw_params(root / params_path)
    expected = {run.experiment: expected_params(raw, run) for run in runs}
    found = experiments(root)
    return {run.experiment: status(run, expected[run.experiment], found) for run in runs}


STAGE = re.compile(r"^Running stage '([^']+)'")
REUSED = re.compile(r"^Stage '([^']+)' didn't change, skipping")
HEARTBEAT_SECONDS = 60.0  # a line while a stage runs silently this long
LOG_DIR = Path(".dvc/tmp/ablate")  # one log per experiment, beside DVC's own temporary files (git-ignored)


def _elapsed(seconds: float) -> str:
    """``seconds`` as ``1h02m03s``, ``2m03s`` or ``3s``.

    Example:
        >>> _elapsed(3.4), _elapsed(123), _elapsed(3723)
        ('3s', '2m03s', '1h02m03s')
    """
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_experiment(root: Path, run: Run, raw: dict, index: int, total: int, params_path: Path, echo=print,
                   heartbeat: float | None = None) -> tuple[bool, Path]:  # fmt: skip
    """Run one experiment with ``dvc exp run --temp`` (the workspace is left as it is) and wait for it.

    Every line DVC prints goes to the experiment's log (``.dvc/tmp/ablate/NAME.log``); each stage
    it starts is echoed as ``[i/n] NAME: stage STAGE (elapsed)``, and a heartbeat line repeats it
    while a stage is silent for ``heartbeat`` seconds. Returns (succeeded, log path).
    """
    import queue
    import threading

    heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
    log_path = root / LOG_DIR / f"{run.experiment}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    args = [*DVC, "exp", "run", "--temp", "-n", run.experiment]  # never -f: it would rerun every stage
    for item in run.set_params(raw):
        args += ["-S", f"{params_path.as_posix()}:{item}"]
    tag = f"[{index}/{total}] {run.experiment}"
    start = time.monotonic()
    stage, reused = "starting", []
    echo(f"{tag}: started ({' '.join(run.set_params(raw)) or 'params.yaml as it is'})")
    lines: queue.Queue = queue.Queue()
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write("$ " + " ".join(args) + "\n")
        proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
        def read() -> None:
            for text in proc.stdout:
                lines.put(text)
            lines.put(None)  # the end of DVC's output

        threading.Thread(target=read, daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=heartbeat)
                except queue.Empty:
                    echo(f"{tag}: {stage} ({_elapsed(time.monotonic() - start)}, still running)")
                    continue
                if line is None:
                    break
                log_file.write(line)
                log_file.flush()
                if found := REUSED.match(line.strip()):
                    reused.append(found.group(1))
                elif found := STAGE.match(line.strip()):
                    if reused:
                        echo(f"{tag}: reused {', '.join(reused)} (unchanged)")
                        reused = []
                    stage = f"stage {found.group(1)}"
                    echo(f"{tag}: {stage} ({_elapsed(time.monotonic() - start)})")
            code = proc.wait()
        except BaseException:  # Ctrl-C: stop DVC and its stage too (its own process group)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    ok = code == 0
    echo(f"{tag}: {'done' if ok else f'FAILED (exit {code}) in {stage}'} in {_elapsed(time.monotonic() - start)}"
         + ("" if ok else f"; its log: {log_path}"))  # fmt: skip
    return ok, log_path


def run_ablation(root: str | Path, rows: list[Row], seeds: int = 1, params_path: Path = Path("params.yaml"), echo=print) -> dict[str, str]:
    """Run every experiment (row x seed) without a current result, one after the other; returns each one's status before.

    The experiments run with ``dvc exp run --temp`` one by one (not DVC's queue), so this returns
    when the last one ends. A failed experiment is named with its log and the others still run;
    the call then raises :class:`AblationError` naming every failed one.
    """
    root = Path(root)
    if seeds < 1:
        raise AblationError(f"--seeds must be at least 1, got {seeds}")
    for warning in check_repo(root):
        echo(f"warning: {warning}")
    runs = [Run(row, seed) for row in rows for seed in range(seeds)]
    before = plan(root, runs, params_path)
    todo = [run for run in runs if before[run.experiment] != "done"]
    done = len(runs) - len(todo)
    if not todo:
        echo(f"nothing to run: all {len(runs)} experiment(s) have their results (diffsketch ablate --show prints them)")
        return before
    echo(f"{len(runs)} experiment(s) ({len(rows)} row(s) x {seeds} seed(s)): {done} done and skipped, {len(todo)} to run")
    raw, failed = read_raw_params(root / params_path), []
    for index, run in enumerate(todo, 1):
        if before[run.experiment] != "new":  # an experiment of that name ran with other params, or is queued: replace it
            gone = _dvc(root, "exp", "remove", run.experiment)
            if gone.returncode != 0:
                raise AblationError(f"could not replace {run.experiment}: dvc exp remove {run.experiment} failed: "
                                    f"{(gone.stderr or gone.stdout).strip()}")  # fmt: skip
        ok, log_path = run_experiment(root, run, raw, index, len(todo), params_path, echo)
        if not ok:
            failed.append(f"{run.experiment} (log: {log_path})")
    if failed:
        raise AblationError(
            f"{len(failed)} experiment(s) failed: {'; '.join(failed)}; fix the cause and run diffsketch ablate again "
            "(finished experiments are kept and skipped)"
        )
    return before


# --- results ----------------------------------------------------------------------------------------


METHODS = ("generator", "student")  # each row is scored twice: its generator directly, and its distilled student
EDGE_METRICS = ("chamfer", "f_score")  # undefined for a sketch without line pixels (their sentinel values are left out)
CONFIDENCE = 0.95


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The mean of ``values`` and its Student-t confidence interval ``(mean, low, high)``; NaN bounds for fewer than 2 values.

    Example:
        >>> [round(v, 4) for v in mean_interval([1.0, 2.0, 3.0])]  # t(0.975, 2) = 4.3027; 4.3027 / sqrt(3) = 2.4841
        [2.0, -0.4841, 4.4841]
        >>> mean_interval([2.0])
        (2.0, nan, nan)
    """
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / n**0.5
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Score:
    """One metric of one method in one row: the mean and its 95 % interval, over seeds (2 or more) or else over the test images.

    ``mean`` is None when no sketch of the method had line pixels (chamfer and F-score are undefined then: "no lines").
    """

    mean: float | None
    low: float = float("nan")
    high: float = float("nan")
    n: int = 0  # values the interval is over
    over: str = "images"  # "seeds" | "images"

    @property
    def has_interval(self) -> bool:
        return self.mean is not None and self.n >= 2 and self.low == self.low


def row_score(per_seed: list[list[float]]) -> Score:
    """The :class:`Score` of one metric from its per-image values of each seed (the no-lines images already left out).

    With 2 or more seeds that have values, the interval is over the seeds' means; with one, over its images.

    Example:
        >>> s = row_score([[1.0, 3.0], [2.0], [3.0]])  # seed means 2, 2, 3: sd 0.57735, t(0.975, 2) = 4.3027
        >>> round(s.mean, 4), round(s.high - s.mean, 4), s.n, s.over  # 4.3027 * 0.57735 / sqrt(3) = 1.4342
        (2.3333, 1.4342, 3, 'seeds')
        >>> row_score([[], []]).mean is None
        True
    """
    seeds = [values for values in per_seed if values]
    if not seeds:
        return Score(None)
    if len(seeds) == 1:
        return Score(*mean_interval(seeds[0]), n=len(seeds[0]), over="images")
    return Score(*mean_interval([sum(v) / len(v) for v in seeds]), n=len(seeds), over="seeds")


@dataclass
class RowResult:
    """What the report shows of one row: scores over its seeds, sketches and curves, read from its experiment commits."""

    row: Row
    revs: list[str]  # one experiment commit per seed
    images: int
    scores: dict[str, dict[str, Score]]  # method (generator, student) -> metric -> score
    sketches: list[tuple[str, bytes, dict[str, bytes]]]  # (photo name, photo PNG, {method: sketch PNG}) of the first seed
    curves: dict[str, list[tuple[int, float]]]  # "train: train/loss" -> [(step, value)], "distill: holdout/l1", ... (first seed)
    extra: dict[str, float]  # other final numbers: the distillation's held-out scores (mean over the seeds)
    model: str = ""  # model.id the row ran with
    lines: dict[str, str] = field(default_factory=dict)  # method -> "images with line pixels / images" of the first seed

    @property
    def seeds(self) -> int:
        return len(self.revs)


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


def _has_lines(record: dict) -> bool:
    return str(record.get("lines", "1")).strip().lower() not in ("0", "false")


def _per_image(root: Path, rev: str) -> list[dict] | None:
    data = _git_bytes(root, rev, f"{EVAL_DIR}/per_image.csv")
    return None if data is None else list(csv.DictReader(io.StringIO(data.decode())))


def collect(root: str | Path, rows: list[Row], seeds: int = 1, params_path: Path = Path("params.yaml")) -> list[RowResult]:
    """The results of every row with at least one done experiment among its ``seeds`` (rows without one are left out).

    An experiment counts when :func:`status` says ``done``: it ran with the params the row stands for in the current ``params.yaml``.
    """
    from diffsketch.evaluation import HIGHER_IS_BETTER

    root = Path(root)
    raw = read_raw_params(root / params_path)
    found = experiments(root)
    results = []
    for row in rows:
        done = []
        for seed in range(seeds):
            run = Run(row, seed)
            exp = found.get(run.experiment)
            if exp is not None and exp.rev and status(run, expected_params(raw, run), found) == "done":
                table = _per_image(root, exp.rev)
                if table:
                    done.append((exp, table))
        if not done:
            continue
        first, table = done[0]
        methods = [m for m in METHODS if any(r["method"] == m for r in table)]
        scores, lines = {}, {}
        for method in methods:
            mine = [[r for r in t if r["method"] == method] for _, t in done]
            keys = [k for k in HIGHER_IS_BETTER if mine[0] and k in mine[0][0] and mine[0][0][k] not in ("", None)]
            scores[method] = {k: row_score([[float(r[k]) for r in seed_rows if k not in EDGE_METRICS or _has_lines(r)]
                                            for seed_rows in mine]) for k in keys}  # fmt: skip
            lines[method] = f"{sum(map(_has_lines, mine[0]))}/{len(mine[0])}"
        sketches = []
        cells = sorted({p.split("/")[3] for p in _git_files(root, first.rev, f"{EVAL_DIR}/grid/")})
        for cell in cells:
            photo = _git_bytes(root, first.rev, f"{EVAL_DIR}/grid/{cell}/photo.png")
            made = {m: _git_bytes(root, first.rev, f"{EVAL_DIR}/grid/{cell}/{m}.png") for m in methods}
            if photo and any(made.values()):
                sketches.append((cell.split("-", 1)[-1], photo, {m: png for m, png in made.items() if png}))
        extras: dict[str, list[float]] = {}
        for exp, _ in done:
            for k, v in _flat(exp.metrics.get(f"{DISTILL_DIR}/metrics.json", {})).items():
                if k.startswith("holdout"):
                    extras.setdefault(f"distill {k}", []).append(float(v))
        curves = {**_curves(root, first.rev, TRAIN_DIR, "train"), **_curves(root, first.rev, DISTILL_DIR, "distill")}
        images = len({r["image"] for r in table if r["method"] == METHOD})
        results.append(RowResult(row, [exp.rev for exp, _ in done], images, scores, sketches, curves,
                                 {k: sum(v) / len(v) for k, v in extras.items()}, str(first.params.get("model", {}).get("id", "")), lines))  # fmt: skip
    return results


def _flat(data: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out
