"""`benchmarks/gpu_profile.py --smoke`: the GPU profile's code runs end to end on the CPU (so it never rots)."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_profile_smoke(tmp_path):
    out = tmp_path / "profile.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_profile.py"), "--smoke", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, projection = result["figures"], result["projection"]
    for name in ("anchor s/image", "sample s/trajectory", "train s/iteration", "pairs s/pair", "distill s/iteration"):
        assert figures[name]["value"] > 0, name
    assert figures["sample s/trajectory"]["batch"] == 4 and figures["pairs s/pair"]["batch"] == 4  # auto on a CPU
    assert figures["student best"]["value"] > 0
    stages = ("sample", "train", "pairs", "distill")
    assert abs(projection["whole profile"]["total_s"] - sum(projection[s]["total_s"] for s in stages)) < 1e-6
    assert projection["pairs"]["count"] == 30000 and projection["sample"]["count"] == 1000  # the paper preset's counts
    assert "projected wall time" in run.stdout
