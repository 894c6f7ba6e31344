"""`diffsketch ablate`: the paper's ablation rows as DVC experiments, and their report."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import CHROMIUM, LAUNCH_ARGS, REPO, run_in
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

    log = run_in([sys.executable, "-m", "diffsketch", "ablate", "--rows", str(tmp_path / "rows.yaml"), "--jobs", "1"], repo)
    assert all(f"ablate-{name}: success" in log for name in rows), log
    logs = {name: run_in([sys.executable, "-m", "dvc", "queue", "logs", f"ablate-{name}"], repo) for name in rows}
    for name, text in logs.items():
        assert "Running stage 'sample'" not in text and "Running stage 'analyze'" not in text, name  # reused from dvc.lock
    assert "Running stage 'train'" not in logs["full"]  # nothing changed
    assert all("Running stage 'train'" in logs[n] and "Running stage 'evaluate'" in logs[n] for n in ("wo-cdst", "wo-vae-fusion"))
    assert "wrote reports/ablation/index.html (3 rows)" in log

    # DVC lists the three experiments with their params and metrics (a second route to the report's numbers)
    shown = json.loads(run_in([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, stdout_only=True))
    head = [b for b in shown if b["rev"] != "workspace"][0]
    exps = {e["name"]: e["revs"][0]["data"] for e in head["experiments"]}
    assert set(exps) == {"ablate-full", "ablate-wo-cdst", "ablate-wo-vae-fusion"}
    assert str(exps["ablate-wo-cdst"]["params"]["params.yaml"]["data"]["train"]["cdst"]).lower() in ("off", "false")
    assert str(exps["ablate-wo-vae-fusion"]["params"]["params.yaml"]["data"]["train"]["vae_fusion"]).lower() in ("off", "false")
    dvc_student = {name: data["metrics"]["reports/eval/metrics.json"]["data"]["student"] for name, data in exps.items()}
    assert dvc_student["ablate-full"] == baseline["student"]  # nothing changed: the committed run's scores
    assert dvc_student["ablate-wo-cdst"] != dvc_student["ablate-full"] != dvc_student["ablate-wo-vae-fusion"]

    report = json.loads((repo / "reports" / "ablation" / "results.json").read_text())
    assert [r["row"] for r in report] == ["full", "wo-cdst", "wo-vae-fusion"]
    for r in report:
        assert r["means"] == pytest.approx(dvc_student[r["experiment"]])
        assert r["images"] == 2 and set(r["spread"]) == set(r["means"])
    page = (repo / "reports" / "ablation" / "index.html").read_text()
    assert page.count('<tr data-row="') == 2 * 3  # one row in the scores and one in the sketches, per row
    assert page.count("<img ") == 1 + 3 * 1  # the grid's photo, then each row's sketch of it
    assert '"train: train/loss"' in page and '"distill: holdout/l1"' in page
    assert "**" in (repo / "reports" / "ablation" / "table.md").read_text()

    again = run_in([sys.executable, "-m", "diffsketch", "ablate", "--rows", str(tmp_path / "rows.yaml")], repo)
    assert "nothing to run" in again and ": success (" not in again, again

    _ablation_page_in_a_browser(repo / "reports" / "ablation" / "index.html")


def _ablation_page_in_a_browser(page_path: Path) -> None:
    """The page in headless Chromium (skipped without Debian's chromium, like the other browser tests)."""
    if not CHROMIUM.is_file():
        return
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        outside = []
        url = page_path.resolve().as_uri()
        context.route("**/*", lambda r: r.continue_() if r.request.url == url else (outside.append(r.request.url), r.abort()))
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector("#curve-0 .main-svg", timeout=30_000)
        assert outside == [] and errors == []
        assert page.locator("#curve-0 .scatterlayer .trace").count() == 3  # one line per row
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ablation-report.png"), full_page=True)
        browser.close()


def test_the_table_marks_the_best_mean_of_each_column_by_its_direction():
    from diffsketch.ablation.runner import RowResult
    from diffsketch.ablation.report import sketches_html, table_html, table_markdown

    def result(name, ssim, chamfer, sketch=b"\x89PNG-" ):
        return RowResult(Row(name, f"row {name}", {"train.cdst": "off"} if name == "b" else {}), "rev", {"ssim": ssim, "chamfer": chamfer},
                         {"ssim": 0.01, "chamfer": 0.5}, 2, [("cat", b"photo", sketch + name.encode())], {}, {})  # fmt: skip

    rows = [result("a", 0.30, 4.0), result("b", 0.50, 6.0), result("c", 0.40, 2.0)]
    markdown = table_markdown(rows).splitlines()
    assert markdown[0] == "| row | changes | ssim ↑ | chamfer (px) ↓ |"
    assert markdown[2] == "| a | `(none)` | 0.3000 ± 0.0100 | 4.0000 ± 0.5000 |"
    assert markdown[3] == '| b | `train.cdst="off"` | **0.5000** ± 0.0100 | 6.0000 ± 0.5000 |'  # highest ssim
    assert markdown[4] == "| c | `(none)` | 0.4000 ± 0.0100 | **2.0000** ± 0.5000 |"  # lowest chamfer
    html = table_html(rows)
    assert html.count("<strong>") == 2 and "<strong>0.5000 ± 0.0100</strong>" in html and "<strong>2.0000 ± 0.5000</strong>" in html
    sketches = sketches_html(rows)
    assert sketches.count("<img ") == 1 + 3 and sketches.index('alt="a: cat"') < sketches.index('alt="b: cat"') < sketches.index('alt="c: cat"')
