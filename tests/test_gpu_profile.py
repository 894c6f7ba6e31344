"""`benchmarks/gpu_profile.py --device cpu`: the GPU profile's code runs end to end on the CPU (so it
never rots), and nothing compiles inside a timed region (dynamo decides compilations before any
backend runs, so the `eager` backend counts what inductor would compile)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

FIELDS = {"stage", "setting", "seconds_per_item", "items", "compiles_in_timed_region", "recompiles",
          "host_syncs_per_step", "peak_memory_bytes"}  # fmt: skip


def _profile_module():
    spec = importlib.util.spec_from_file_location("gpu_profile", REPO / "benchmarks" / "gpu_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_profile_on_the_cpu_reports_every_stage_without_compiling_in_timed_regions(tmp_path):
    out = tmp_path / "profile.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_profile.py"), "--device", "cpu", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for r in records:
        assert FIELDS <= r.keys(), r
        assert r["compiles_in_timed_region"] == 0, r
        assert r["seconds_per_item"] > 0 and r["items"] > 0, r
    stages = ("sample", "train", "pairs", "distill", "extract")
    assert [r["setting"] for r in records] == sorted((r["setting"] for r in records), key=["eager", "compiled"].index)
    for setting in ("eager", "compiled"):
        assert {r["stage"] for r in records if r["setting"] == setting} == set(stages), setting
    sample = next(r for r in records if r["stage"] == "sample")
    assert sample["batch"] == 2 and sample["items"] == 4  # warm-up block excluded: 2 timed blocks of 2
    assert [r["batch"] for r in records if r["stage"] == "extract" and r["setting"] == "eager"] == [1, 2]


def test_gpu_profile_budget_stops_cleanly_with_what_was_measured(tmp_path, capsys):
    out = tmp_path / "profile.jsonl"
    code = _profile_module().main(["--device", "cpu", "--stages", "extract", "--json", str(out), "--budget", "0"])
    assert code == 0 and "reached: stopped" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 1 and records[0]["stage"] == "extract" and records[0]["setting"] == "eager"
    assert records[0]["batch"] == 1 and FIELDS <= records[0].keys()
