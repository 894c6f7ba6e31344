"""What the store's safety checks cost, and whether the disk projection holds.

1. The readers' chunk check (every trajectory a reader takes checks that its chunk files exist, so
   that an absent chunk is never read as zeros): ``diffsketch.analysis.timesteps.analyze`` on a
   synthetic store, with the check and with it switched off, interleaved; prints the medians and
   their ratio. Target: with / without <= 1.05.
2. The projection: a store sampled with the tiny model (smoke-sized settings), then ``du`` of it
   (allocated blocks of its files and folders) over its recorded ``projected_bytes``, on each
   folder given (e.g. a tmpfs and an ext4 one). Target: within 0.85-1.15.

    python benchmarks/store_checks.py [--trajectories 64] [--steps 50] [--repeats 5] [--folders /tmp /dev/shm]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from diffsketch.analysis.timesteps import analyze
from diffsketch.core.params import AnalyzeConfig
from diffsketch.diffusion.features import LayerSpec
from diffsketch.store import zarr_store as store

LAYERS = [LayerSpec(f"up{i}_res0", "m", c, 8) for i, c in enumerate((64, 128, 256, 320))]


def synthetic(path: Path, trajectories: int, steps: int) -> Path:
    rng = np.random.default_rng(0)
    layout = store.StoreLayout(trajectories, list(range(steps * 20, 0, -20)), ["cond"], LAYERS, [], 4, 64, (4, 8, 8))
    root = store.create(path, layout, dict(fingerprint="bench", model="tiny", classes=["a"], unet_layers=[vars(s) for s in LAYERS]))
    for i in range(trajectories):
        unet = {s.name: rng.normal(size=(steps, 1, s.channels, 4, 4)).astype(np.float16) for s in LAYERS}
        store.write_trajectory(root, i, unet, {}, np.zeros((64, 64, 3), np.uint8), np.zeros((4, 8, 8)), np.zeros((4, 8, 8)))
    return path


def time_analyze(path: Path, check: bool) -> float:
    real = store._absent
    if not check:
        store._absent = lambda array, selection: None
    try:
        started = time.perf_counter()
        analyze(path, AnalyzeConfig(pca_dims=8, k_min=2, k_max=6, k="auto", feature_maps=0), progress=False)
        return time.perf_counter() - started
    finally:
        store._absent = real


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def projection(folder: Path) -> tuple[int, int]:
    from diffsketch.core.params import ModelConfig, parse_params
    from diffsketch.diffusion.models import load_model
    from diffsketch.store.collect import run_sample

    work = Path(tempfile.mkdtemp(dir=folder))
    try:
        (work / "prompts").mkdir()
        (work / "prompts" / "a.txt").write_text("a red bicycle\na cat on a sofa\na bowl of ramen\n")
        params = parse_params({"model": {"id": "tiny", "device": "cpu"}, "sample": dict(
            prompts=str(work / "prompts"), trajectories=8, steps=8, resolution=64, pool=1, batch_size=4)})
        out = run_sample(params, work / "features.zarr", progress=False, model=load_model(ModelConfig(id="tiny", device="cpu")))
        return du(out), int(store.open_store(out).attrs["projected_bytes"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--folders", nargs="*", type=Path, default=[Path(tempfile.gettempdir())])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic(Path(tmp) / "s.zarr", args.trajectories, args.steps)
        time_analyze(path, True)  # warm-up: imports, caches
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for check in (True, False):
                times[check].append(time_analyze(path, check))
        # the check alone against the read it guards (one trajectory's layer), steadier than whole runs
        from diffsketch.analysis.timesteps import FeatureReader

        reader = FeatureReader.open(path)
        name = reader.layers[-1]
        array = reader.arrays[name]
        check = timeit.timeit(lambda: store._absent(array, (1, slice(None), reader.half)), number=500) / 500
        read = timeit.timeit(lambda: reader.stored_block(name, 1), number=50) / 50
    print(f"the chunk check of one trajectory's layer {check * 1e6:.1f} us, its read {read * 1e6:.1f} us: {check / read:.2%}")
    with_check, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"analyze, {args.trajectories} trajectories x {args.steps} steps: with the chunk check {with_check:.3f} s, "
          f"without {without:.3f} s (medians of {args.repeats}); ratio {with_check / without:.3f} (target <= 1.05)")
    for folder in args.folders:
        used, projected = projection(folder)
        print(f"projection on {folder}: du {used} bytes, projected_bytes {projected}; du / projected {used / projected:.3f} "
              "(target 0.85-1.15)")


if __name__ == "__main__":
    main()
