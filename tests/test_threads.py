"""The threads setting: the cores a process may use, the pools it sizes, idle threads that sleep,
and results that do not depend on it."""

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from typer.testing import CliRunner

from diffsketch.cli.main import app
from diffsketch.core import DiffsketchError
from diffsketch.core import threads as threads_module
from diffsketch.core.threads import (
    ThreadsError,
    apply_threads,
    available_cores,
    cgroup_cpu_limit,
    resolve_threads,
    sleep_when_idle,
)

COUNTS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REAL_BUSY_ELSEWHERE = threads_module.busy_elsewhere


@pytest.fixture
def restored(monkeypatch):
    """Whatever a test does to the pools and their environment variables is undone after it."""
    threads = torch.get_num_threads()
    for name in (*COUNTS, "OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
        monkeypatch.setenv(name, "x")  # recorded by monkeypatch, so restored (or removed) afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(threads_module, "busy_elsewhere", lambda *args, **kwargs: 0)  # as on a quiet machine
    yield monkeypatch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def _tree(root, files: dict[str, str]):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


# --- the cores a process may use ------------------------------------------------------------------


def test_cgroup_v2_quota_is_the_smallest_on_the_way_to_the_root(tmp_path):
    root = _tree(tmp_path, {"cgroup.controllers": "cpu io", "cpu.max": "max 100000", "jobs/cpu.max": "250000 100000",
                            "jobs/mine/cpu.max": "max 100000"})  # fmt: skip
    assert cgroup_cpu_limit(root, "0::/jobs/mine\n") == 2.5  # the parent's 250 ms per 100 ms
    assert cgroup_cpu_limit(root, "0::/\n") is None  # the root: no limit
    (root / "jobs/mine/cpu.max").write_text("50000 100000\n")
    assert cgroup_cpu_limit(root, "0::/jobs/mine\n") == 0.5


def test_cgroup_v1_quota(tmp_path):
    root = _tree(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, "4:cpu,cpuacct:/\n") is None  # -1: no quota
    (root / "cpu,cpuacct/cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(root, "4:cpu,cpuacct:/\n") == 3.0
    assert cgroup_cpu_limit(tmp_path / "none", "") is None  # no cgroup filesystem at all


def test_available_cores_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    v2 = _tree(tmp_path / "v2", {"cgroup.controllers": "cpu", "cpu.max": "250000 100000"})  # read from this process's cgroup up
    assert available_cores(v2) == 2  # 2.5 CPUs of quota: 2 threads, not 3 fighting for them
    assert available_cores(tmp_path / "nothing") == 6  # no quota: the affinity mask
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert available_cores(v2) == 1


def test_auto_follows_omp_num_threads_and_bad_settings_are_refused(restored):
    restored.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads("auto") == 1
    restored.delenv("OMP_NUM_THREADS")
    assert resolve_threads("auto") == available_cores()
    assert resolve_threads(4) == 4 and resolve_threads("3") == 3
    for bad in (0, -2, "0", "many", "2.5", 2.5, True, None):
        with pytest.raises(ThreadsError, match="auto or a whole number"):
            resolve_threads(bad)
    assert issubclass(ThreadsError, DiffsketchError)


def test_auto_leaves_the_cores_other_processes_keep_busy_unless_they_keep_all(restored, caplog):
    """Busy cores read from /proc/stat's runnable threads (less the reader): left out while some core is
    free, all cores again when every core of the machine is busy; a count below the cores is logged."""
    restored.setattr(threads_module, "busy_elsewhere", REAL_BUSY_ELSEWHERE)
    restored.setattr(threads_module, "cgroup_cpu_limit", lambda *args, **kwargs: None)
    restored.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    cases = [(2, 0, 2), (2, 1, 1), (2, 2, 2), (2, 12, 2), (8, 3, 2), (8, 6, 2), (8, 7, 1), (8, 8, 2), (8, 20, 2)]
    for cpus, busy, expected in cases:
        restored.setattr(os, "cpu_count", lambda cpus=cpus: cpus)
        stat = f"cpu  1 2\nprocs_running {busy + 1}\nprocs_blocked 0\n"  # the thread reading it runs too
        restored.setattr(threads_module, "_read", lambda path, stat=stat: stat if path.name == "stat" else "")
        assert threads_module.busy_elsewhere(interval=0) == busy
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="diffsketch"):
            assert resolve_threads("auto") == expected, (cpus, busy)
        logged = [r.getMessage() for r in caplog.records]
        assert logged == ([f"threads: 1 of the 2 cores this process may use (other processes keep {busy} busy; "
                           "threads: 2 or --threads 2 uses them all)"] if expected == 1 else [])  # fmt: skip
    readings = iter([1, 3, 3, 2, 1, 3, 3, 3, 2])  # runnable threads, the reader included: busy 0, 2, 2, 1, 0, 2, ...
    restored.setattr(threads_module, "_read", lambda path: f"procs_running {next(readings)}\n")
    assert threads_module.busy_elsewhere(interval=0) == 0  # a quiet first reading is taken at once
    readings = iter([3, 1, 2, 3, 1, 3, 3, 2, 1, 3])
    assert threads_module.busy_elsewhere(interval=0) == 1  # else the median of 9: 2 0 1 2 0 2 2 1 0
    assert next(readings) == 3  # no tenth reading
    restored.setenv("OMP_NUM_THREADS", "2")  # the environment's count wins over the busy cores
    assert resolve_threads("auto") == 2
    assert resolve_threads(2) == 2  # a number is taken as it is


def test_a_command_reads_the_busy_cores_once_and_logs_its_count_once(restored, caplog):
    """The command line resolves ``auto`` once: one look at the busy cores (up to 0.2 s of readings on a
    busy machine), one log line, and the count it logs is the count it applies."""
    from diffsketch.cli.common import use_threads

    calls = []
    restored.setattr(threads_module, "busy_elsewhere", lambda *args, **kwargs: calls.append(1) or 1)
    restored.setattr(threads_module, "cgroup_cpu_limit", lambda *args, **kwargs: None)
    restored.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    restored.setattr(os, "cpu_count", lambda: 2)
    with caplog.at_level(logging.INFO, logger="diffsketch"):
        assert use_threads(None) == 1
    assert len(calls) == 1 and torch.get_num_threads() == 1
    assert len([r for r in caplog.records if r.getMessage().startswith("threads: 1 of the 2 cores")]) == 1


# --- what the setting does ------------------------------------------------------------------------


def test_apply_threads_sizes_torch_blas_and_the_environment(restored):
    from threadpoolctl import threadpool_info

    for count in (1, 2):
        assert apply_threads(count) == count
        assert torch.get_num_threads() == count
        assert all(os.environ[name] == str(count) for name in COUNTS)
        blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and set(blas) == {count}


def test_sleep_when_idle_sets_the_wait_policy_and_keeps_what_the_user_set(restored):
    assert sleep_when_idle() is False  # torch is loaded in this process: too late for its OpenMP runtime
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["KMP_BLOCKTIME"] == "0"
    restored.setenv("OMP_WAIT_POLICY", "ACTIVE")
    restored.delenv("KMP_BLOCKTIME")
    sleep_when_idle()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["KMP_BLOCKTIME"] == "0"


def _spin_count(code: str) -> str | None:
    """GNU OpenMP's spin count as the runtime itself reports it (OMP_DISPLAY_ENV) after ``code`` imports torch."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    lines = [line for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    return lines[0].split("=")[1].strip().strip("'") if lines else None


@pytest.mark.slow
def test_the_command_line_makes_openmp_threads_sleep():
    """The command line (and every stage script, which imports it first) sets the wait policy before torch
    loads, and GNU OpenMP takes it: 0 spins instead of its default 300,000 before a waiting thread sleeps."""
    spins = _spin_count("import diffsketch.cli.common, torch")
    if spins is None:
        pytest.skip("this torch does not use GNU OpenMP")
    assert spins == "0"


def test_commands_take_threads_from_the_option_or_the_params(restored, prompts_dir, tmp_path):
    """``--threads`` wins over the params' ``threads``; a bad value is one line; the stage then runs (here: fails
    on its missing prompts, after the threads were set)."""
    params = tmp_path / "params.yaml"
    params.write_text(f"threads: 1\nmodel: {{id: tiny, device: cpu}}\nsample: {{prompts: {tmp_path / 'none'}}}\n")
    runner = CliRunner()
    torch.set_num_threads(2)
    result = runner.invoke(app, ["sample", "-p", str(params), "-o", str(tmp_path / "f.zarr"), "--no-progress"])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert torch.get_num_threads() == 1
    result = runner.invoke(app, ["sample", "-p", str(params), "-o", str(tmp_path / "f.zarr"), "--threads", "2"])
    assert result.exit_code == 1 and torch.get_num_threads() == 2
    result = runner.invoke(app, ["sample", "-p", str(params), "-o", str(tmp_path / "f.zarr"), "--threads", "0"])
    assert result.exit_code == 1 and "--threads '0' is not a thread count" in result.output and "Traceback" not in result.output


def test_the_extractor_sizes_the_pools_when_asked(restored, student):
    from diffsketch import SketchExtractor

    torch.set_num_threads(2)
    SketchExtractor.load(student, "cpu", "torch")
    assert torch.get_num_threads() == 2  # None (the default): left as the caller set it
    SketchExtractor.load(student, "cpu", "torch", threads=1)
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ThreadsError, match="auto or a whole number"):
        SketchExtractor.load(student, "cpu", "torch", threads="lots")


def test_threads_is_in_no_result_key():
    from diffsketch.core.params import parse_params

    one, four = parse_params({"threads": 1}), parse_params({"threads": 4})
    assert one.threads == 1 and four.threads == 4
    assert one.model_dump() == four.model_dump() and "threads" not in one.model_dump()


# --- the numbers do not depend on it --------------------------------------------------------------


def _with_threads(count: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_convolutions_and_matrix_products_are_bit_identical_with_one_or_two_threads():
    from diffsketch.student.network import Student, StudentConfig

    torch.manual_seed(0)
    images, weight = torch.rand(2, 3, 48, 40), torch.randn(16, 3, 3, 3)
    a, b = torch.randn(96, 200), torch.randn(200, 64)
    student = Student(StudentConfig(width=8, downsamples=2, blocks=1)).eval()

    def run():
        with torch.inference_mode():
            return F.conv2d(images, weight, padding=1), a @ b, student(images)

    for one, two in zip(_with_threads(1, run), _with_threads(2, run), strict=True):
        assert torch.equal(one, two)


def test_a_long_reduction_differs_at_most_in_float_rounding():
    """Summing a million values splits the work by thread, so the float32 rounding may differ in the last
    bits; both stay within a few float32 epsilons (relative to the sum of magnitudes) of the float64 sum."""
    values = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0))
    exact = values.double().sum().item()
    scale = values.abs().sum().item()
    for count in (1, 2):
        total = _with_threads(count, lambda: values.sum().item())
        assert abs(total - exact) <= 8 * torch.finfo(torch.float32).eps * scale
