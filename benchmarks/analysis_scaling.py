"""The `analyze` stage at paper width: seconds per trajectory, scaling in N, peak memory.

Builds synthetic feature stores with the SD 1.5 layer table pooled to an 8x8 grid (the paper
profile's store: 12 layers, 10,560 channels, 675,840 values per vector, 50 timesteps), with N and
4N trajectories, then runs `diffsketch.analysis.timesteps.analyze` on them, each run in a fresh process
(so the peak resident memory, torch's allocations included, is that run's own), alternating:

- ``pca: randomized`` (the default, streamed block Krylov) on N and 4N, on the CPU, and on the GPU
  when one is visible;
- ``pca: incremental`` (scikit-learn's IncrementalPCA, the earlier path) on N, side by side.

It prints the PCA's seconds per trajectory (the marginal cost between N and 4N, which is what
1000 trajectories cost each, and the average at N), the ratio between the two paths, the time
ratio 4N/N (linear: 4), the peak memory, the whole `analyze` call's time, and the projected time of
the paper's 1000 trajectories: the PCA's fixed cost, plus 1000 x its marginal cost, plus the
k-means sweep on 50,000 points (measured here on random 25-dimensional points, since it does not
depend on the store; on the small stores the sweep runs full k-means, which the paper's 50,000
points do not).

    python benchmarks/analysis_scaling.py [--n 8] [--steps 50] [--pool 8] [--repeats 1] [--incremental-n 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from diffsketch.store import zarr_store as store
from diffsketch.analysis.timesteps import analyze, sweep_k
from diffsketch.core.params import AnalyzeConfig
from diffsketch.diffusion.features import LayerSpec

SD15_UNET = [(1280, 8)] * 6 + [(640, 32)] * 3 + [(320, 64)] * 3
PAPER_TRAJECTORIES = 1000
CFG = dict(pca_dims=25, k_min=2, k_max=20, k=13)  # the paper preset's analysis


def make_store(path: Path, trajectories: int, steps: int, pool: int) -> Path:
    specs = [LayerSpec(f"l{i}", "m", c, s) for i, (c, s) in enumerate(SD15_UNET)]
    timesteps = list(range(1000 - 1000 // steps + 1, 0, -(1000 // steps)))[:steps]
    layout = store.StoreLayout(trajectories, timesteps, ["cond"], specs, [], pool, 64, (4, 8, 8))
    attrs = dict(fingerprint="bench", model="bench", classes=["x"], unet_layers=[vars(s) for s in specs])
    root = store.create(path, layout, attrs)
    rng = np.random.default_rng(0)
    drift = np.linspace(0, 3, steps)[:, None, None, None, None]
    for i in range(trajectories):
        unet = {s.name: (drift + rng.normal(size=(steps, 1, s.channels, pool, pool))).astype(np.float16) for s in specs}
        store.write_trajectory(root, i, unet, {}, np.zeros((64, 64, 3), np.uint8), np.zeros((4, 8, 8)), np.zeros((4, 8, 8)))
    return path


def measure_here(path: str, pca: str, device: str) -> dict:
    """One analysis in this process: wall seconds and the process's peak resident memory."""
    cfg = AnalyzeConfig(**CFG, pca=pca, device=device)
    start = time.perf_counter()
    result = analyze(path, cfg, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = dict(seconds=seconds, pca_seconds=result.meta["pca_seconds"], peak_mb=peak_mb)
    if device == "cuda":
        import torch

        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure(path: Path, pca: str, device: str) -> dict:
    cmd = [sys.executable, __file__, "--measure", str(path), "--pca", pca, "--device", device]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def kmeans_seconds(points: int, repeats: int = 1) -> float:
    """The k-means sweep and silhouettes on ``points`` random 25-dimensional points (the paper's 50,000)."""
    rng = np.random.default_rng(0)
    projection = (rng.normal(size=(points, 25)) + rng.integers(0, 13, size=(points, 1))).astype(np.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sweep_k(projection, AnalyzeConfig(**CFG))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="trajectories in the small store (the large has 4x)")
    parser.add_argument("--incremental-n", type=int, default=4, help="trajectories for the IncrementalPCA side (0: skip)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--pca", default="randomized", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_here(args.measure, args.pca, args.device)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    n, n4, ni = args.n, 4 * args.n, args.incremental_n
    with tempfile.TemporaryDirectory() as tmp:
        stores = {k: make_store(Path(tmp) / f"s{k}.zarr", k, args.steps, args.pool) for k in sorted({n, n4, ni} - {0})}
        runs: dict[tuple, list[dict]] = {}
        for _ in range(args.repeats):
            for device in devices:
                for k in (n, n4):
                    runs.setdefault(("randomized", device, k), []).append(measure(stores[k], "randomized", device))
            if ni:
                runs.setdefault(("incremental", "cpu", ni), []).append(measure(stores[ni], "incremental", "cpu"))
        cluster = kmeans_seconds(args.steps * PAPER_TRAJECTORIES)

    def seconds(key, field="pca_seconds"):
        return statistics.median(r[field] for r in runs[key])

    def peak(key, field="peak_mb"):
        return max(r.get(field, 0) for r in runs[key])

    dim = sum(c * args.pool**2 for c, _ in SD15_UNET)
    print(f"store: {len(SD15_UNET)} SD 1.5 layers pooled to {args.pool}x{args.pool} ({dim:,} values per vector), "
          f"{args.steps} steps; analysis: pca_dims 25, k 2..20; every run in its own process")  # fmt: skip
    print(f"k-means sweep + silhouettes on {args.steps * PAPER_TRAJECTORIES:,} points: {cluster:.1f} s")
    per_traj = {}
    for device in devices:
        t1, t4 = seconds(("randomized", device, n)), seconds(("randomized", device, n4))
        marginal = (t4 - t1) / (n4 - n)
        fixed = max(t1 - n * marginal, 0.0)
        per_traj[device] = marginal
        projected = fixed + PAPER_TRAJECTORIES * marginal + cluster
        gpu = f", GPU peak {peak(('randomized', device, n4), 'gpu_peak_mb'):.0f} MB" if device == "cuda" else ""
        whole = [seconds(("randomized", device, k), "seconds") for k in (n, n4)]
        print(f"\nrandomized ({device}), PCA time (whole analyze call in brackets):")
        print(f"  N  = {n:4d}: {t1:7.1f} s [{whole[0]:.1f} s] ({t1 / n:.2f} s/traj on average), "
              f"peak RSS {peak(('randomized', device, n)):.0f} MB")  # fmt: skip
        print(f"  4N = {n4:4d}: {t4:7.1f} s [{whole[1]:.1f} s] ({t4 / n4:.2f} s/traj on average), "
              f"peak RSS {peak(('randomized', device, n4)):.0f} MB{gpu}")  # fmt: skip
        print(f"  marginal cost {marginal:.3f} s/traj, fixed {fixed:.1f} s; time ratio 4N/N {t4 / t1:.2f} (linear: 4.00, "
              f"less with fixed costs); memory ratio 4N/N {peak(('randomized', device, n4)) / peak(('randomized', device, n)):.2f}")  # fmt: skip
        print(f"  projected {PAPER_TRAJECTORIES} trajectories: {projected / 60:.1f} min "
              f"(target: <= 10 min on 2 CPU cores, <= 2 min on a GPU)")  # fmt: skip
    if ni:
        ti = seconds(("incremental", "cpu", ni))
        print(f"\nincremental (cpu), PCA time: N = {ni}: {ti:.1f} s ({ti / ni:.2f} s/traj), "
              f"peak RSS {peak(('incremental', 'cpu', ni)):.0f} MB")  # fmt: skip
        print(f"  projected {PAPER_TRAJECTORIES} trajectories: {(ti / ni * PAPER_TRAJECTORIES + cluster) / 60:.1f} min")
        print(f"\nratio incremental / randomized per trajectory (cpu): {ti / ni / per_traj['cpu']:.1f}x "
              f"(against the randomized average at N: {ti / ni / (seconds(('randomized', 'cpu', n)) / n):.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
