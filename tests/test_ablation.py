"""`diffsketch ablate`: the paper's ablation rows as DVC experiments, and their report."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CHROMIUM, LAUNCH_ARGS, REPO, run_in
from typer.testing import CliRunner

from diffsketch.ablation.runner import AblationError, Experiment, Row, check_repo, expected_params, load_rows, status
from diffsketch.cli.main import app
from diffsketch.core.params import load_params

ARTIFACTS = REPO / "test-artifacts" / "ablation"
ENV = {"DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip


def _write_rows(path: Path, rows: dict) -> Path:
    path.write_text(yaml.safe_dump(rows, sort_keys=False))
    return path


# --- the rows ---------------------------------------------------------------------------------------


def test_every_shipped_row_changes_what_it_names():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = load_rows(REPO / "presets" / "ablations.yaml")
    names = [r.name for r in rows]
    assert names[0] == "full" and {"wo-cdst", "wo-vae-fusion", "one-level", "uniform-timesteps", "random-timesteps",
                                   "one-timestep", "wo-l1", "l1-only"} <= set(names)  # fmt: skip
    base = load_params(REPO / "params.yaml").model_dump(mode="json")
    for row in rows:
        got = expected_params(raw, row)
        changed = {f"{s}.{k}" for s in got for k in got[s] if got[s][k] != base[s][k]}
        assert changed == {k for k, v in row.overrides.items() if base[k.split(".")[0]][k.split(".")[1]] != v}, row.name
        for key, value in row.overrides.items():
            section, leaf = key.split(".")
            assert got[section][leaf] == value, (row.name, key)
    assert expected_params(raw, rows[0]) == base  # the full method is params.yaml as it is


def test_rows_are_checked_before_anything_runs(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(AblationError, match=r"(?s)ablation row 'bad' is invalid.*train\.cdts: unknown key"):
        expected_params(raw, Row("bad", "", {"train.cdts": "off"}))
    with pytest.raises(AblationError, match=r"(?s)row 'bad'.*train\.aggregation"):
        expected_params(raw, Row("bad", "", {"train.aggregation": "three"}))
    with pytest.raises(AblationError, match="lower-case letters"):
        load_rows(_write_rows(tmp_path / "a.yaml", {"Bad Name": {"set": {}}}))
    with pytest.raises(AblationError, match="dotted params keys"):
        load_rows(_write_rows(tmp_path / "b.yaml", {"x": {"set": {"cdst": "off"}}}))
    with pytest.raises(AblationError, match=r"no row 'nope'.*rows: x"):
        load_rows(_write_rows(tmp_path / "c.yaml", {"x": {"set": {}}}), only=["nope"])
    with pytest.raises(AblationError, match="not found"):
        load_rows(tmp_path / "missing.yaml")
    (tmp_path / "d.yaml").write_text("x: [unclosed")
    with pytest.raises(AblationError, match="not valid YAML"):
        load_rows(tmp_path / "d.yaml")


def test_row_status():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    row = Row("wo-cdst", "", {"train.cdst": "off"})
    expected = expected_params(raw, row)
    ran = json.loads(json.dumps(raw))
    ran["train"]["cdst"] = "off"  # how DVC's -S leaves it: the string
    metrics = {"reports/eval/metrics.json": {"images": 2, "student": {"ssim": 0.5}}}
    assert status(row, expected, {}) == "new"
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", "abc", "success", ran, metrics)}) == "done"
    ran_bool = json.loads(json.dumps(ran))
    ran_bool["train"]["cdst"] = False  # YAML 1.1 reads `off` as false: the same params
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", "abc", "success", ran_bool, metrics)}) == "done"
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", "abc", "success", raw, metrics)}) == "stale"
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", "abc", "failed", ran, metrics)}) == "stale"
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", "abc", "success", ran, {})}) == "stale"
    assert status(row, expected, {"ablate-wo-cdst": Experiment("ablate-wo-cdst", None, "queued", {}, {})}) == "pending"


def test_the_repository_is_checked(tmp_path):
    env = {**os.environ, **ENV}
    with pytest.raises(AblationError, match="not a git repository.*git init"):
        check_repo(tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    with pytest.raises(AblationError, match="no commit yet.*git commit"):
        check_repo(tmp_path)
    (tmp_path / "a").write_text("a")
    subprocess.run(["git", "add", "a"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "a"], cwd=tmp_path, check=True, env=env)
    with pytest.raises(AblationError, match="not a DVC repository: dvc init"):
        check_repo(tmp_path)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["ablate", "--rows", str(REPO / "presets" / "ablations.yaml")])
    finally:
        os.chdir(old)
    assert result.exit_code == 1 and "not a DVC repository" in result.output and "Traceback" not in result.output


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ablate_runs_rows_as_dvc_experiments_once(reproduced_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(reproduced_repo, repo, symlinks=True)  # the tiny pipeline, reproduced, dvc.lock committed
    rows = {
        "full": {"description": "the full method", "set": {}},
        "wo-cdst": {"description": "w/o CDST", "set": {"train.cdst": "off"}},
        "wo-vae-fusion": {"description": "w/o VAE fusion", "set": {"train.vae_fusion": "off"}},
    }
    _write_rows(tmp_path / "rows.yaml", rows)  # outside the repo: an untracked file there would not reach the experiments
    baseline = json.loads((repo / "reports" / "eval" / "metrics.json").read_text())
    command = [sys.executable, "-m", "diffsketch", "ablate", "--rows", str(tmp_path / "rows.yaml"), "--only", "full,wo-vae-fusion"]

    log = run_in(command, repo)  # returns by itself, exit 0 (run_in checks)
    assert "2 experiment(s) (2 row(s) x 1 seed(s)): 0 done and skipped, 2 to run" in log, log
    assert "[1/2] ablate-full: done in" in log and "[2/2] ablate-wo-vae-fusion: done in" in log, log
    assert "[2/2] ablate-wo-vae-fusion: stage train (" in log and "[2/2] ablate-wo-vae-fusion: stage evaluate (" in log
    assert "[1/2] ablate-full: stage " not in log  # nothing changed: every stage reused
    logs = {name: (repo / ".dvc" / "tmp" / "ablate" / f"ablate-{name}.log").read_text() for name in ("full", "wo-vae-fusion")}
    for name, text in logs.items():
        assert "Running stage 'sample'" not in text and "Running stage 'analyze'" not in text, name  # reused from dvc.lock
    assert "wrote reports/ablation/index.html (2 rows)" in log
    assert not subprocess.run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.lock"], cwd=repo, capture_output=True, check=False,
                              text=True).stdout  # fmt: skip  the workspace is left as it was

    # DVC lists the experiments with their params and metrics (a second route to the report's numbers)
    shown = json.loads(run_in([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, stdout_only=True))
    head = next(b for b in shown if b["rev"] != "workspace")
    exps = {e["name"]: e["revs"][0]["data"] for e in head["experiments"]}
    assert set(exps) == {"ablate-full", "ablate-wo-vae-fusion"}
    assert str(exps["ablate-wo-vae-fusion"]["params"]["params.yaml"]["data"]["train"]["vae_fusion"]).lower() in ("off", "false")
    dvc_scores = {name: data["metrics"]["reports/eval/metrics.json"]["data"] for name, data in exps.items()}
    assert dvc_scores["ablate-full"] == baseline  # nothing changed: the committed run's scores
    assert {"generator", "student"} <= set(baseline)  # the stage scores the generator directly too
    assert dvc_scores["ablate-wo-vae-fusion"]["generator"] != baseline["generator"]

    report = json.loads((repo / "reports" / "ablation" / "results.json").read_text())
    assert [r["row"] for r in report] == ["full", "wo-vae-fusion"]
    for r in report:  # one seed: the interval is over the photos; the means are the evaluation's (no lines left out)
        for method in ("generator", "student"):
            for metric, score in r["scores"][method].items():
                assert score["mean"] == (pytest.approx(dvc_scores[r["experiment"]][method][metric]) if score["mean"] is not None else None)
        assert r["images"] == 2 and r["seeds"] == 1 and r["model"] == "tiny"
    page = (repo / "reports" / "ablation" / "index.html").read_text()
    assert 'id="smoke-note"' in page and page.count('<tr data-row="') == 2 + 2 * 2  # scores, then each row's two sketch rows

    again = run_in(command, repo)
    assert "nothing to run" in again and "done in" not in again, again
    shown_table = run_in([*command, "--show"], repo, stdout_only=True)
    assert max(map(len, shown_table.splitlines())) <= 100 and shown_table.startswith("row "), shown_table

    _ablation_page_in_a_browser(repo / "reports" / "ablation" / "index.html")


def _ablation_page_in_a_browser(page_path: Path) -> None:
    """The page in headless Chromium (skipped without Debian's chromium, like the other browser tests)."""
    if not CHROMIUM.is_file():
        return
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        outside = []
        url = page_path.resolve().as_uri()
        context.route("**/*", lambda r: r.continue_() if r.request.url == url else (outside.append(r.request.url), r.abort()))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector("#curve-0 .main-svg", timeout=30_000)
        assert outside == [] and errors == []
        assert page.locator("#curve-0 .scatterlayer .trace").count() == 2  # one line per row
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280  # wide tables scroll in their boxes
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ablation-report.png"), full_page=True)
        browser.close()


# --- the runner, with a fake `dvc` ---------------------------------------------------------------

FAKE_DVC = r"""
import json, os, subprocess, sys, time
from pathlib import Path
import yaml

state = Path(".dvc/tmp/fake-state.json")
data = json.loads(state.read_text()) if state.is_file() else {}
args = sys.argv[1:]
Path(".dvc/tmp/fake-calls.txt").open("a").write(" ".join(args) + "\n")
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
if args[:3] == ["exp", "show", "--json"]:
    exps = [{"name": n, "revs": [{"rev": e["rev"], "name": n, "data": {"rev": e["rev"], "params": {"params.yaml": {"data": e["params"]}},
             "metrics": {"reports/eval/metrics.json": {"data": {"student": {"ssim": 0.5}}}}}, "error": None}]} for n, e in data.items()]
    print(json.dumps([{"rev": "workspace", "experiments": None}, {"rev": head, "experiments": exps}]))
    sys.exit(0)
if args[:2] == ["exp", "remove"]:
    data.pop(args[2])
    state.write_text(json.dumps(data))
    sys.exit(0)
assert args[:3] == ["exp", "run", "--temp"] and "-f" not in args, args  # -f would rerun every stage
name = args[args.index("-n") + 1]
assert name not in data, "the experiment exists: dvc exp run would refuse"
params = yaml.safe_load(Path("params.yaml").read_text())
for i, item in enumerate(args):
    if item == "-S":
        key, value = args[i + 1].split(":", 1)[1].split("=", 1)
        section, leaf = key.split(".")
        params[section][leaf] = yaml.safe_load(value)
print(f"Reproducing experiment '{name}'", flush=True)
print("Stage 'sample' didn't change, skipping", flush=True)
for stage in ("train", "evaluate"):
    print(f"Running stage '{stage}':", flush=True)
    time.sleep(float(os.environ.get("FAKE_STAGE_SECONDS", "0.4")))
if name in os.environ.get("FAKE_FAIL", "").split(","):
    print(f"ERROR: failed to reproduce 'evaluate': {name} broke", flush=True)
    sys.exit(1)
seed = params["train"]["seed"]
rows = ["dataset,image,method,ssim,chamfer,f_score,lines"]
for k, image in enumerate(["a.png", "b.png", "c.png"]):
    rows.append(f"eval,eval/{image},student,{0.5 + 0.01 * seed + 0.01 * k},{3.0 + k},{0.4 + 0.02 * k},1")
    rows.append(f"eval,eval/{image},generator,{0.3 + 0.01 * k},181.0,0.0,0")  # no line pixels drawn
env = {**os.environ, "GIT_INDEX_FILE": ".dvc/tmp/fake-index"}
git = lambda *a, inp=None: subprocess.run(["git", *a], input=inp, capture_output=True, text=True, env=env, check=True).stdout.strip()
git("read-tree", "HEAD")
blob = git("hash-object", "-w", "--stdin", inp="\n".join(rows) + "\n")
git("update-index", "--add", "--cacheinfo", f"100644,{blob},reports/eval/per_image.csv")
rev = git("commit-tree", git("write-tree"), "-p", head, "-m", name)
data[name] = {"rev": rev, "params": params}
state.write_text(json.dumps(data))
print("Ran experiment(s): " + name, flush=True)
"""


@pytest.fixture
def fake_dvc(tmp_path, monkeypatch):
    """A git + DVC-looking repo (params.yaml, dvc.yaml, .dvc, one commit) whose `dvc` is a fake that records its calls."""
    from diffsketch.ablation import runner

    repo = tmp_path / "repo"
    (repo / ".dvc" / "tmp").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "dvc.lock").write_text("schema: '2.0'\n")
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for args in (["init", "-q"], ["add", "params.yaml", "dvc.yaml", "dvc.lock"], ["commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (tmp_path / "fake_dvc.py").write_text(FAKE_DVC)
    monkeypatch.setattr(runner, "DVC", [sys.executable, str(tmp_path / "fake_dvc.py")])
    monkeypatch.chdir(repo)
    return repo


def _runs(repo: Path) -> list[str]:
    calls = (repo / ".dvc" / "tmp" / "fake-calls.txt").read_text().splitlines()
    return [c.split(" -n ")[1].split()[0] for c in calls if c.startswith("exp run")]


def test_the_runner_streams_each_experiment_names_failures_and_resumes(fake_dvc, monkeypatch):
    from diffsketch.ablation import runner

    rows = [Row("full", "", {}), Row("wo-cdst", "", {"train.cdst": "off"}), Row("wo-l1", "", {"losses.l1": 0})]
    echoed: list[tuple[float, str]] = []
    echo = lambda line: echoed.append((time.monotonic(), line))
    monkeypatch.setenv("FAKE_FAIL", "ablate-wo-cdst")
    monkeypatch.setattr(runner, "HEARTBEAT_SECONDS", 0.25)  # the fake's stages are silent for 0.4 s
    with pytest.raises(AblationError, match=r"1 experiment\(s\) failed: ablate-wo-cdst \(log: .*ablate-wo-cdst\.log\)") as err:
        runner.run_ablation(fake_dvc, rows, echo=echo)
    lines = [line for _, line in echoed]
    assert lines[0] == "3 experiment(s) (3 row(s) x 1 seed(s)): 0 done and skipped, 3 to run"
    assert "[1/3] ablate-full: reused sample (unchanged)" in lines
    train = next(t for t, line in echoed if line.startswith("[1/3] ablate-full: stage train ("))
    done = next(t for t, line in echoed if line.startswith("[1/3] ablate-full: done in "))
    assert done - train >= 0.7  # printed while the experiment ran (two stages of 0.4 s each came after it)
    assert any(line.startswith("[1/3] ablate-full: stage train (") and "still running" in line for line in lines)
    failed = next(line for line in lines if line.startswith("[2/3] ablate-wo-cdst: FAILED"))
    assert "in stage evaluate" in failed and "ablate-wo-cdst.log" in failed
    assert "[3/3] ablate-wo-l1: done in" in " ".join(lines)  # the rows after a failure still run
    log_file = fake_dvc / ".dvc" / "tmp" / "ablate" / "ablate-wo-cdst.log"
    assert str(log_file) in str(err.value) and "ablate-wo-cdst broke" in log_file.read_text()
    assert _runs(fake_dvc) == ["ablate-full", "ablate-wo-cdst", "ablate-wo-l1"]

    monkeypatch.setenv("FAKE_FAIL", "")
    echoed.clear()
    runner.run_ablation(fake_dvc, rows, echo=echo)  # returns once the unfinished row is done
    assert echoed[0][1] == "3 experiment(s) (3 row(s) x 1 seed(s)): 2 done and skipped, 1 to run"
    assert _runs(fake_dvc)[3:] == ["ablate-wo-cdst"]
    echoed.clear()
    runner.run_ablation(fake_dvc, rows, echo=echo)
    assert [line for _, line in echoed] == ["nothing to run: all 3 experiment(s) have their results (diffsketch ablate --show prints them)"]
    assert len(_runs(fake_dvc)) == 4

    rows[2] = Row("wo-l1", "", {"losses.l1": 1})  # the row changed: its experiment is replaced
    runner.run_ablation(fake_dvc, rows, echo=echo)
    calls = (fake_dvc / ".dvc" / "tmp" / "fake-calls.txt").read_text().splitlines()
    assert calls[-2] == "exp remove ablate-wo-l1" and _runs(fake_dvc)[4:] == ["ablate-wo-l1"] and "losses.l1=1" in calls[-1]


def test_seeds_run_each_row_with_shifted_training_seeds_and_show_fits_100_columns(fake_dvc, monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_SECONDS", "0")
    rows = {"full": {"description": "the full method", "set": {}},
            "a-very-long-row-name-for-the-width": {"description": "w/o CDST", "set": {"train.cdst": "off"}},
            **{f"never-run-row-with-a-long-name-{i}": {"description": "-", "set": {"train.lr": 0.1 * i}} for i in (1, 2, 3)}}  # fmt: skip
    _write_rows(fake_dvc.parent / "rows.yaml", rows)
    result = CliRunner().invoke(app, ["ablate", "--rows", str(fake_dvc.parent / "rows.yaml"), "--seeds", "2", "--only", "full"])
    assert result.exit_code == 0, result.output
    assert _runs(fake_dvc) == ["ablate-full", "ablate-full-seed1"]
    calls = (fake_dvc / ".dvc" / "tmp" / "fake-calls.txt").read_text()
    assert "params.yaml:train.seed=1 -S params.yaml:pairs.seed=1 -S params.yaml:distill.seed=1" in calls  # params.yaml's seeds are 0
    assert "[2/2] ablate-full-seed1: done in" in result.output and "wrote reports/ablation/index.html (1 rows)" in result.output

    only = "full,a-very-long-row-name-for-the-width"
    result = CliRunner().invoke(app, ["ablate", "--rows", str(fake_dvc.parent / "rows.yaml"), "--seeds", "2", "--only", only])
    assert result.exit_code == 0 and _runs(fake_dvc)[2:] == ["ablate-a-very-long-row-name-for-the-width",
                                                             "ablate-a-very-long-row-name-for-the-width-seed1"]  # fmt: skip
    shown = CliRunner().invoke(app, ["ablate", "--rows", str(fake_dvc.parent / "rows.yaml"), "--seeds", "2", "--show"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(map(len, lines)) <= 100 and len(_runs(fake_dvc)) == 4  # --show runs nothing
    assert all(f"never-run-row-with-a-long-name-{i}" in shown.output for i in (1, 2, 3))  # wrapped, not cut
    flat = " ".join(shown.output.split())  # the notes wrap at 100 columns
    assert "sd: seeds; mean±95% half-width * = interval" in flat and "drawn (not ranked)" in flat
    assert lines[0].split() == ["row", "sd", "gen", "ssim", "↑", "gen", "F", "↑", "gen", "chamfer", "↓", "stu", "ssim", "↑", "stu", "F", "↑",
                                "stu", "chamfer", "↓"]  # fmt: skip
    full = next(line for line in lines if line.startswith("full "))
    # the student's ssim per seed: images 0.50, 0.51, 0.52 (+0.01 for seed 1): seed means 0.51 and 0.52 -> mean 0.515,
    # half-width t(0.975, 1) * 0.00707 / sqrt(2) = 12.706 * 0.005 = 0.0635; the generator drew no lines
    assert full.split()[1:] == ["2", "0.310±0.000", "no", "lines", "no", "lines", "0.515±0.064", "0.420±0.000", "4.000±0.000"]
    assert "tiny random model: these figures check the pipeline, not the method" in shown.output  # params.yaml's model is tiny
    report = json.loads((fake_dvc / "reports" / "ablation" / "results.json").read_text())
    assert report[0]["scores"]["generator"]["chamfer"]["mean"] is None and report[0]["lines"] == {"generator": "0/3", "student": "3/3"}


def _result(name, values: dict[str, tuple], model="tiny"):
    from diffsketch.ablation.runner import RowResult, Score

    scores = {"student": {k: Score(*v, n=3, over="seeds") if v[0] is not None else Score(None) for k, v in values.items()}}
    return RowResult(Row(name, f"row {name}", {"train.cdst": "off"} if name == "b" else {}), ["rev"] * 3, 2, scores,
                     [("cat", b"photo", {"student": b"\x89PNG-" + name.encode()})], {}, {}, model, {"student": "2/2"})  # fmt: skip


def test_a_row_is_best_only_where_its_interval_clears_the_others_and_no_lines_is_never_ranked():
    from diffsketch.ablation.report import best_row, show_table, sketches_html, table_html, table_markdown

    rows = [
        _result("a", {"ssim": (0.30, 0.28, 0.32), "chamfer": (4.0, 3.0, 5.0)}),
        _result("b", {"ssim": (0.50, 0.45, 0.55), "chamfer": (None,)}),  # drew no lines: its chamfer sentinel is not a score
        _result("c", {"ssim": (0.40, 0.33, 0.47), "chamfer": (2.0, 1.5, 4.5)}),  # overlaps a's chamfer interval
    ]
    assert best_row(rows, "student", "ssim") is None  # b's interval (0.45..0.55) overlaps c's (0.33..0.47): no bold
    assert best_row(rows, "student", "chamfer") is None  # a and c overlap; b is not ranked
    rows[2] = _result("c", {"ssim": (0.40, 0.36, 0.44), "chamfer": (1.0, 0.5, 1.5)})
    assert best_row(rows, "student", "ssim") == "b" and best_row(rows, "student", "chamfer") == "c"
    markdown = table_markdown(rows).splitlines()
    assert markdown[0].startswith("> These rows ran with the tiny random model")
    assert markdown[2] == "| row | changes | seeds | student ssim ↑ | student chamfer (px) ↓ |"
    assert markdown[4] == "| a | `(none)` | 3 | 0.3000 ± 0.0200 | 4.0000 ± 1.0000 |"
    assert markdown[5] == '| b | `train.cdst="off"` | 3 | **0.5000 ± 0.0500** | no lines |'
    assert markdown[6] == "| c | `(none)` | 3 | 0.4000 ± 0.0400 | **1.0000 ± 0.5000** |"
    html = table_html(rows)
    assert html.count("<strong>") == 2 and '<td class="num nolines" data-metric="student.chamfer">no lines</td>' in html
    assert sketches_html(rows).count("<img ") == 1 + 3
    long = [_result("x" * 60, {"ssim": (0.123456, 0.1, 0.2), "f_score": (0.5, 0.4, 0.6), "chamfer": (123.45, 100.0, 150.0)})] * 2
    assert max(len(line) for line in show_table(long).splitlines()) <= 100
    assert show_table(long).splitlines()[-3] == "tiny random model: these figures check the pipeline, not the method"
