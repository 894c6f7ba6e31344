"""How the analysis scales with the number of trajectories: time and peak memory for N and 4N.

Builds two synthetic feature stores with the SD 1.5 layer table pooled to an 8x8 grid (the paper
profile's store: 12 layers, 10,560 channels, 50 timesteps), N and 4N trajectories, then runs
`diffsketch.analysis.analyze` on each, alternating, and prints the ratios. Goal: time about
linear in N (ratio near 4), peak memory flat (ratio near 1). Peak memory is the peak of Python
allocations (tracemalloc, which numpy reports to) during the analysis.

    python benchmarks/analysis_scaling.py [--n 8] [--steps 50] [--pool 8] [--repeats 2]
"""

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from diffsketch import store
from diffsketch.analysis import analyze
from diffsketch.config import AnalyzeConfig
from diffsketch.features import LayerSpec

SD15_UNET = [(1280, 8)] * 6 + [(640, 32)] * 3 + [(320, 64)] * 3


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


def measure(path: Path, cfg: AnalyzeConfig) -> tuple[float, float]:
    tracemalloc.start()
    start = time.perf_counter()
    analyze(path, cfg, progress=False)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="trajectories in the small store (the large has 4x)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = AnalyzeConfig(pca_dims=25, k_min=2, k_max=20, k="auto")
    with tempfile.TemporaryDirectory() as tmp:
        small = make_store(Path(tmp) / "small.zarr", args.n, args.steps, args.pool)
        large = make_store(Path(tmp) / "large.zarr", 4 * args.n, args.steps, args.pool)
        times, peaks = {"N": [], "4N": []}, {"N": [], "4N": []}
        for _ in range(args.repeats):
            for name, path in (("N", small), ("4N", large)):
                seconds, peak = measure(path, cfg)
                times[name].append(seconds)
                peaks[name].append(peak)
    t_small, t_large = statistics.median(times["N"]), statistics.median(times["4N"])
    m_small, m_large = max(peaks["N"]), max(peaks["4N"])
    print(f"store: {len(SD15_UNET)} SD 1.5 layers pooled to {args.pool}x{args.pool}, {args.steps} steps")
    print(f"N  = {args.n:5d} trajectories: {t_small:8.2f} s, peak {m_small:8.1f} MB")
    print(f"4N = {4 * args.n:5d} trajectories: {t_large:8.2f} s, peak {m_large:8.1f} MB")
    print(f"time ratio 4N/N:   {t_large / t_small:.2f}  (linear = 4.00)")
    print(f"memory ratio 4N/N: {m_large / m_small:.2f}  (flat = 1.00)")


if __name__ == "__main__":
    main()
