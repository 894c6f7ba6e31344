"""What the readers' damage checks cost `diffsketch analyze`, on a store sampled with the tiny model.

Every trajectory a reader takes goes through ``diffsketch.store.zarr_store.read``: one ``stat`` per
chunk file of it (an absent file would otherwise read as zeros; the analysis, which reads each
trajectory once per pass of its streamed PCA, stats each file on its first read only), and every
chunk carries a CRC32C checksum that is verified when it is decoded. This script samples a small store with the tiny
random model (``diffsketch.store.collect.run_sample``), and a twin of it written without the
checksum codec (same params and seeds, so the same values), then times, interleaved with the order
rotated each round:

- ``checked``: the store as written, the readers as they are;
- ``no absent check``: the same store, ``zarr_store._absent`` replaced by ``lambda *a: None``;
- ``no checks``: the twin store without chunk checksums, and no absent check (the shard index keeps
  its CRC32C, zarr's default for sharding, in both stores).

Each variant is timed two ways: the whole ``diffsketch.analysis.timesteps.analyze`` call (what
``diffsketch analyze`` runs, without the report's feature maps) and its reading path alone (every
complete trajectory's ``FeatureReader.blocks``, one pass of the streamed PCA). It prints the medians
and the ratios checked / unchecked, measured side by side in this run. Target: ``analyze`` with the
checks <= 1.05 x without them.

The differences are a few percent of runs under a second, below the run-to-run noise of a busy
machine, so the script also times the check inside each instrumented ``analyze`` run (every call of
``_absent``, and the bytes of every file read, costed at this machine's CRC32C speed) and
prints that share as a ratio too: the steadier figure. The tiny model's features are small, so a
check is a large part of each read here; the paper's stores (pool 8, 50 steps, 10,560 channels)
read far more bytes per checked file (``benchmarks/store_checks.py`` times that on a synthetic
store).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/analyze_damage_check.py \\
        [--trajectories 12] [--steps 20] [--pool full] [--repeats 15]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import timeit
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from diffsketch.analysis.timesteps import FeatureReader, analyze
from diffsketch.core.params import AnalyzeConfig, ModelConfig, parse_params
from diffsketch.diffusion.models import load_model
from diffsketch.store import zarr_store as store
from diffsketch.store.collect import run_sample

VARIANTS = ("checked", "no absent check", "no checks")
TARGET = 1.05


def _entry_keys(array, selection) -> list[str]:
    """The chunk files of the entry that ``selection`` reads (none for a whole-array read)."""
    first = selection[0] if isinstance(selection, tuple) else selection
    whole = not isinstance(first, (int, np.integer)) or (array.shards or array.chunks)[0] != 1
    return [] if whole else store.chunk_keys(array, int(first))


@contextmanager
def absent_check(enabled: bool, spent: list | None = None, read: list | None = None):
    """The readers' absent-chunk check as it is, or switched off (every file taken as present).
    ``spent``: collects ``(seconds, chunk keys)`` of each check, and ``read`` the chunk keys of every
    read, checked or not, each of whose bytes go through the CRC32C (an instrumented run, not compared)."""
    real, real_read = store._absent, store.read
    if not enabled:
        store._absent = lambda array, selection: None
    elif spent is not None:

        def counted(array, selection=slice(None), check_files=True):
            read.extend(_entry_keys(array, selection))
            return real_read(array, selection, check_files)

        store.read = counted

        def measured(array, selection):
            started = time.perf_counter()
            try:
                return real(array, selection)
            finally:
                spent.append((time.perf_counter() - started, _entry_keys(array, selection)))

        store._absent = measured
    try:
        yield
    finally:
        store._absent, store.read = real, real_read


@contextmanager
def without_checksums():
    """Stores created inside write their chunks without the CRC32C codec (blosc zstd alone)."""
    real = store.compressors
    store.compressors = lambda: tuple(c for c in real() if type(c).__name__ != "Crc32cCodec")
    try:
        yield
    finally:
        store.compressors = real


def sample(folder: Path, name: str, args, model) -> Path:
    prompts = folder / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "a.txt").write_text("a red bicycle\na cat on a sofa\n")
    (prompts / "b.txt").write_text("a bowl of ramen\na yellow school bus\n")
    pool = args.pool if args.pool == "full" else int(args.pool)
    sample_params = {"prompts": str(prompts), "trajectories": args.trajectories, "steps": args.steps, "resolution": 64,
                     "pool": pool, "batch_size": 4}  # fmt: skip
    params = parse_params({"model": {"id": "tiny", "device": "cpu"}, "sample": sample_params})
    return Path(run_sample(params, folder / name, progress=False, model=model))


def has_checksums(path: Path) -> bool:
    """Whether the chunks (inside the shards) of the store's first UNet layer carry a CRC32C."""
    root = store.open_store(path)
    array = root[f"unet/{root.attrs['unet_layers'][0]['name']}"]
    return any(type(c).__name__ == "Crc32cCodec" for c in array.compressors)


def read_all(path: Path) -> None:
    """The analysis reading path: every layer block of every complete trajectory (one PCA pass)."""
    reader = FeatureReader.open(path)
    for index in reader.trajectories:
        reader.blocks(int(index))


def run_analyze(path: Path, cfg: AnalyzeConfig) -> None:
    analyze(path, cfg, progress=False)


def crc32c_seconds_per_byte() -> float:
    """What verifying a CRC32C costs per byte here (google_crc32c, which zarr's codec uses; zarrs uses
    its own, also hardware-accelerated)."""
    import google_crc32c

    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    return min(timeit.repeat(lambda: google_crc32c.value(data), number=5, repeat=5)) / 5 / len(data)


def timed(call, *args) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of ``call(*args)``; the CPU time (all of the process's threads) is
    the steadier of the two beside a competing process."""
    wall, cpu = time.perf_counter(), time.process_time()
    call(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool", default="full", help="sample.pool: full (each layer's own grid) or a number")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger("diffsketch").setLevel(logging.ERROR)  # e.g. "best silhouette at k_max": not what is measured
    cfg = AnalyzeConfig(pca_dims=8, k_min=2, k_max=min(8, args.steps - 1), k="auto", feature_maps=0, device="cpu")

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(ModelConfig(id="tiny", device="cpu"))
        started = time.perf_counter()
        checked = sample(Path(tmp), "checked.zarr", args, model)
        with without_checksums():
            bare = sample(Path(tmp), "bare.zarr", args, model)
        sampling = time.perf_counter() - started
        assert has_checksums(checked) and not has_checksums(bare), "the twin store must differ only by its checksums"
        layer = f"unet/{store.open_store(checked).attrs['unet_layers'][0]['name']}"
        assert np.array_equal(store.open_store(checked)[layer][:], store.open_store(bare)[layer][:]), "same values"
        stores = {"checked": (checked, True), "no absent check": (checked, False), "no checks": (bare, False)}

        for path, check in stores.values():  # warm-up: imports, caches, the page cache
            with absent_check(check):
                run_analyze(path, cfg)
                read_all(path)
        times = {(what, v): [] for what in ("analyze", "read") for v in VARIANTS}  # [(wall, cpu), ...]
        attributed = []  # (analyze seconds, seconds inside the absent check, stats, bytes of the files checked)
        for round_ in range(args.repeats):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for variant in order:
                path, check = stores[variant]
                with absent_check(check):
                    times["analyze", variant].append(timed(run_analyze, path, cfg))
                    times["read", variant].append(timed(read_all, path))
            spent, read = [], []  # the same run instrumented: its own share of the checks, free of run-to-run noise
            with absent_check(True, spent, read):
                total = timed(run_analyze, checked, cfg)[0]
            keys = [key for _, ks in spent for key in ks]
            attributed.append((total, sum(t for t, _ in spent), len(keys), sum(os.path.getsize(checked / k) for k in read)))
        per_byte = crc32c_seconds_per_byte()

    print(f"store: tiny model, {args.trajectories} trajectories x {args.steps} steps, pool {args.pool}, 64 px "
          f"(both stores sampled in {sampling:.1f} s); {args.repeats} interleaved rounds; medians (min)")
    median = {(key, c): statistics.median(t[c] for t in v) for key, v in times.items() for c in (0, 1)}
    fastest = {(key, c): min(t[c] for t in v) for key, v in times.items() for c in (0, 1)}
    for what, label in (("analyze", "analyze()"), ("read", "reading path")):
        for c, clock in ((0, "wall"), (1, "CPU")):
            cells = ", ".join(f"{v} {median[(what, v), c]:.3f} s ({fastest[(what, v), c]:.3f})" for v in VARIANTS)
            print(f"{label:13s} {clock:4s} {cells}")
    for what, label in (("analyze", "analyze()"), ("read", "reading path")):
        for off in VARIANTS[1:]:
            cells = ", ".join(
                f"{clock} median {median[(what, 'checked'), c] / median[(what, off), c]:.3f} "
                f"(min {fastest[(what, 'checked'), c] / fastest[(what, off), c]:.3f})"
                for c, clock in ((0, "wall"), (1, "CPU"))
            )
            print(f"{label:13s} checked / {off}: {cells}")
    total, in_check, stats, read_bytes = (statistics.median(x) for x in zip(*attributed))
    crc = read_bytes * per_byte  # every read file's bytes go through the CRC32C once per read
    print(f"attributed, within the checked analyze() runs (medians): {total * 1e3:.1f} ms, of it the absent check "
          f"{in_check * 1e3:.2f} ms ({stats:.0f} stats, {in_check / max(stats, 1) * 1e6:.1f} us each) and CRC32C about "
          f"{crc * 1e3:.2f} ms ({read_bytes / 1e6:.1f} MB checksummed)")
    verdicts = {
        "wall-clock median ratio, analyze() checked / no checks": median[("analyze", "checked"), 0] / median[("analyze", "no checks"), 0],
        "CPU-time median ratio, analyze() checked / no checks": median[("analyze", "checked"), 1] / median[("analyze", "no checks"), 1],
        "attributed ratio (the checks' own share of analyze())": total / (total - in_check - crc),
    }
    for label, ratio in verdicts.items():
        print(f"target <= {TARGET}: {label} {ratio:.3f} -> {'within' if ratio <= TARGET else 'NOT within'}")


if __name__ == "__main__":
    main()
