"""The paper profile's stages on one GPU, eager and then compiled, reported as it goes.

With SD 1.5's architecture and random weights (``model.id: sd15-random``; speed does not depend on
the weights) at 512 px and 50 DDIM steps, fp16, it measures each stage in each setting (``eager``,
then ``compiled``: ``torch.compile`` of the UNet, the VAE decoder, the pairs generator and the student):

    anchor   diffusers' StableDiffusionPipeline, batch 1, eager: seconds per image (the reference)
    sample   the `sample` stage (diffsketch.store.collect.run_sample: capture, pooling, Zarr writes), per trajectory
    train    one training iteration (diffsketch.training.trainer.Trainer.step), per iteration
    pairs    the `pairs` stage (diffsketch.student.pairs.run_pairs), per pair
    distill  one distillation iteration at the paper preset (diffsketch.student.distill.distill_step), per iteration
    extract  the paper-size student at 512x512, per image, at batch 1 and batched

Each stage is timed over several repeats after its own warm-up (where ``torch.compile`` compiles): for
`sample` and `pairs` one run of the stage whose first block is the warm-up and whose next blocks are
timed (the batch probe, the store's creation and the first block are outside the timed region). After
each measurement one JSON line is written and flushed (``--json OUT``), so a run cut short keeps every
finished figure::

    {"stage": "sample", "setting": "compiled", "seconds_per_item": ..., "items": ..., "unit": "trajectory",
     "compiles_in_timed_region": 0, "recompiles": 0, "host_syncs_per_step": ..., "peak_memory_bytes": ..., ...}

``compiles_in_timed_region`` counts graphs ``torch.compile`` compiled while the stage was timed (dynamo's
compilation metrics: it must be 0); ``recompiles`` those compiled in the stage (warm-up included) for a
function that already had a graph; ``host_syncs_per_step`` the synchronisations CUDA's sync debug mode
reports in one untimed step after the warm-up (a denoising step for sample and pairs, an iteration for
train and distill, a forward for extract; null on a CPU); ``peak_memory_bytes`` the peak of reserved CUDA
memory over the timed region (null on a CPU). ``--budget SECONDS`` stops cleanly, between measurements,
once that much time has passed.

``--device cpu`` runs the same code on the CPU with the tiny model at tiny sizes, compiling with dynamo's
``eager`` backend (the same graphs, guards and recompilations; no code generation), so CI checks the
script and its compile counts (tests/test_gpu_profile.py). Its timings mean nothing.

Run it (offline): HF_HUB_OFFLINE=1 python benchmarks/gpu_profile.py [--device cpu] [--json OUT.jsonl] [--budget S]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

import diffsketch.student.pairs as pairs_module
from diffsketch.core.params import DistillConfig, load_params, parse_params
from diffsketch.diffusion.features import unet_layers, vae_layers
from diffsketch.diffusion.models import CompileWatch, SDModel, apply_fast_paths, build_random
from diffsketch.diffusion.sampling import ddim_loop, empty_embedding, encode_prompts, initial_noise
from diffsketch.store import collect
from diffsketch.student.distill import Distiller, PatchDiscriminator, distill_step
from diffsketch.student.network import Student, StudentConfig
from diffsketch.training.example import build_example
from diffsketch.training.generator import save_generator
from diffsketch.training.losses import SketchLoss, load_clip, load_lpips
from diffsketch.training.prior import fit_prior
from diffsketch.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PAPER = load_params(REPO / "presets" / "paper.yaml").model_dump(mode="json")  # read through the one schema
PROMPT = "a photo of a horse in mud"

GPU = dict(model="sd15-random", dtype=torch.float16, resolution=512, steps=50, timesteps=13, clip="ViT-B-32:",
           lpips="random", batch=None, repeats=3, train_batch=None, student_size=512, student_batches=(1, 32),
           distill_batch=None, distill_crop=None, backend="inductor", anchor=True)  # fmt: skip
CPU = dict(model="tiny", dtype=torch.float32, resolution=64, steps=2, timesteps=2, clip="tiny", lpips="random",
           batch=2, repeats=2, train_batch=2, student_size=64, student_batches=(1, 2), distill_batch=2,
           distill_crop=64, backend="eager", anchor=False)  # fmt: skip
AUTO_CAP = 128  # the most items `auto` may choose here
STAGES = ("anchor", "sample", "train", "pairs", "distill", "extract")


class OutOfBudget(Exception):
    """The --budget has passed: stop between measurements."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Report:
    """Writes one JSON line per measurement, flushed at once, and prints it."""

    def __init__(self, path: Path | None, budget: float | None, device: torch.device):
        self.file = open(path, "w") if path else None  # noqa: SIM115 - open for the whole run
        self.budget, self.start, self.device = budget, time.perf_counter(), device

    def check_budget(self) -> None:
        if self.budget is not None and time.perf_counter() - self.start > self.budget:
            raise OutOfBudget

    def write(self, stage: str, setting: str, seconds: float, items: int, unit: str, watch: CompileWatch,
              recompiles: int, syncs: float | None, peak: int | None, **extra) -> None:  # fmt: skip
        record = dict(stage=stage, setting=setting, seconds_per_item=seconds / items, items=items, unit=unit,
                      compiles_in_timed_region=watch.compiles, recompiles=recompiles, host_syncs_per_step=syncs,
                      peak_memory_bytes=peak, device=str(self.device), elapsed_s=round(time.perf_counter() - self.start, 1),
                      **extra)  # fmt: skip
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        print(f"  {stage:<8} {setting:<9} {record['seconds_per_item']:10.4f} s/{unit:<11} items {items:<4} "
              f"compiles in timed region {watch.compiles}, recompiles {recompiles}, syncs/step {syncs}, "
              f"peak {None if peak is None else round(peak / 2**20)} MB  [{record['elapsed_s']} s]", flush=True)  # fmt: skip


@contextmanager
def timed_region(device: torch.device):
    """Times the block (synchronised at both ends) and counts what compiles in it; yields a dict that
    gets ``seconds``, ``watch`` and ``peak`` (reserved CUDA bytes)."""
    out: dict = {}
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with CompileWatch() as watch:
        start = time.perf_counter()
        yield out
        _sync(device)
        out["seconds"] = time.perf_counter() - start
    out["watch"] = watch
    out["peak"] = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None


def host_syncs(device: torch.device, fn) -> int | None:
    """Synchronisations CUDA's sync debug mode reports while ``fn()`` runs (None on a CPU, where ``fn`` is not run)."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


class BlockClock:
    """A stand-in for a stage's progress bar: the time of each ``update`` (a block written), and the
    compile metrics between the first update (the warm-up block's end) and the last."""

    last: BlockClock | None = None

    def __init__(self, *args, device: torch.device, **kwargs):
        self.device, self.times, self.items = device, [], []
        self.watch = CompileWatch()
        BlockClock.last = self

    def update(self, n: int = 1) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())
        self.items.append(n)
        if len(self.times) == 1:
            self.watch.__enter__()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        if self.times:
            self.watch.__exit__(None, None, None)
        self.peak = torch.cuda.max_memory_reserved(self.device) if self.device.type == "cuda" else None

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def _bare_model(parts: dict, setup: dict, device: torch.device) -> SDModel:
    parts = {k: copy.deepcopy(v) for k, v in parts.items()}
    for name in ("unet", "vae", "text_encoder"):
        parts[name] = parts[name].to(device, setup["dtype"]).eval().requires_grad_(False)
    return SDModel(**parts, source=setup["model"], device=device, dtype=setup["dtype"])


def _params(setup: dict, device: torch.device, **sections):
    paper = json.loads(json.dumps(PAPER))
    settings = {
        "model": {"id": setup["model"], "device": str(device)},
        "sample": {**paper["sample"], "prompts": str(REPO / "data" / "prompts"), "resolution": setup["resolution"],
                   "steps": setup["steps"], "batch_size": setup["batch"] or "auto"},
        "example": {**paper["example"], "image": None, "sketch": "xdog"},
        "losses": {**paper["losses"], "clip_model": setup["clip"], "lpips_net": setup["lpips"]},
        "train": {**paper["train"], "cdst_horizon": 10, **({"batch": setup["train_batch"]} if setup["train_batch"] else {})},
        "pairs": {**paper["pairs"], "batch_size": setup["batch"] or "auto"},
    }  # fmt: skip
    if setup["resolution"] < 512:
        settings["sample"]["pool"] = 1
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return parse_params(settings)


def _stage_blocks(module, run, device: torch.device) -> BlockClock:
    """Run a stage with its progress bar replaced by a :class:`BlockClock`; returns the clock."""
    real = module.tqdm
    module.tqdm = lambda *a, **k: BlockClock(*a, device=device, **k)
    try:
        run()
    finally:
        module.tqdm = real
    return BlockClock.last


class _Stop(Exception):
    """Raised by the stand-in progress bar: the stage has resolved its batch and created its store."""


def _probed(module, run, path: Path) -> int:
    """The batch ``batch_size: auto`` resolves to in a stage: the stage runs until its store exists
    (the probe and the creation), then stops before its first batch; the store records the batch."""
    import zarr

    real = module.tqdm

    def stop(*args, **kwargs):
        raise _Stop

    module.tqdm = stop
    try:
        run()
    except _Stop:
        pass
    finally:
        module.tqdm = real
    return int(zarr.open_group(str(path), mode="r").attrs["batch_size"])


def _loop_syncs(model: SDModel, setup: dict, batch: int) -> float | None:
    """Host synchronisations per step of the denoising loop at the stage's batch (CUDA), after the warm-up."""
    if model.device.type != "cuda":
        return None
    cond = encode_prompts(model, [PROMPT] * batch)
    noise = initial_noise(model, list(range(batch)), setup["resolution"])
    steps = setup["steps"]
    n = host_syncs(model.device, lambda: ddim_loop(model, noise, cond, empty_embedding(model, batch), steps=steps, guidance=5.0))
    return n / steps


def profile(setup: dict, device: torch.device, settings: list[str], stages: list[str], report: Report) -> None:
    torch._dynamo.config.recompile_limit = 64  # counted and reported, never a silent fall-back to eager
    torch._dynamo.config.accumulated_recompile_limit = 1024
    diffusion = bool({"sample", "train", "pairs"} & set(stages))
    with torch.random.fork_rng(devices=[]):
        parts = build_random(setup["model"], 0) if diffusion or (setup["anchor"] and "anchor" in stages) else None
    res, steps, repeats = setup["resolution"], setup["steps"], setup["repeats"]
    tmp = Path(tempfile.mkdtemp(prefix="gpu_profile_"))
    print(f"{setup['model']}; {device}, {setup['dtype']}, {res} px, {steps} steps; scratch {tmp}", flush=True)

    if setup["anchor"] and "anchor" in stages:  # the bare diffusers pipeline, batch 1, eager
        pipe = _bare_model(parts, setup, device).as_pipeline()
        pipe.set_progress_bar_config(disable=True)

        def image(seed: int) -> None:
            pipe(PROMPT, height=res, width=res, num_inference_steps=steps, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(seed), output_type="np")  # fmt: skip

        image(0)
        with timed_region(device) as t:
            for r in range(repeats):
                image(r + 1)
        report.write("anchor", "eager", t["seconds"], repeats, "image", t["watch"], 0, None, t["peak"], batch=1)
        del pipe
        report.check_budget()

    model = apply_fast_paths(_bare_model(parts, setup, device)) if diffusion else None
    del parts
    params = _params(setup, device)
    k = setup["timesteps"]
    indices = sorted({round(i * (steps - 1) / max(k - 1, 1)) for i in range(k)})
    if diffusion:  # what train and pairs share: the prior, the example (built eagerly, once), the losses
        unet_specs = unet_layers(model.unet.config, res, model.vae_scale_factor, params.sample.capture)
        vae_specs = vae_layers(model.vae.config, res)
        hidden = model.text_encoder.config.hidden_size
        prior = fit_prior(torch.randn(40, 77, hidden, generator=torch.Generator().manual_seed(0)), 16, meta={"model": setup["model"]})
        prior.save(tmp / "prior.safetensors")
        example = build_example(model, params, unet_specs, vae_specs, indices, progress=False)
        loss = SketchLoss(params.losses, load_clip(setup["clip"], device), load_lpips(setup["lpips"], device), example.image,
                          example.sketch).to(device)  # fmt: skip
    meta = dict(model=setup["model"], resolution=res, steps=steps, guidance=params.sample.guidance,
                capture=params.sample.capture, decode=params.sample.decode, ddim_indices=indices)  # fmt: skip

    def run_setting(setting: str) -> None:  # every stage in one setting
        if setting == "compiled" and diffusion:
            apply_fast_paths(model, compile=True, backend=setup["backend"])
        backend = setup["backend"] if setting == "compiled" else None

        if "sample" in stages:  # one run: block 1 the warm-up, then `repeats` timed blocks of the same batch
            with CompileWatch() as stage_watch:
                batch = setup["batch"]
                if batch is None:  # `auto`: the stage's probe (outside the timed run) picks the batch; the store records it
                    probe = tmp / f"sample-probe-{setting}.zarr"
                    batch = _probed(collect, lambda: collect.run_sample(_params(setup, device, sample={"trajectories": AUTO_CAP}),
                                                                        probe, progress=False, model=model, force=True), probe)  # fmt: skip
                n = batch * (1 + repeats)
                clock = _stage_blocks(collect, lambda: collect.run_sample(
                    _params(setup, device, sample={"trajectories": n, "batch_size": batch}), tmp / f"sample-{setting}.zarr",
                    progress=False, model=model), device)  # fmt: skip
            timed_items = sum(clock.items[1:])
            syncs = _loop_syncs(model, setup, batch)
            report.write("sample", setting, clock.times[-1] - clock.times[0], timed_items, "trajectory", clock.watch,
                         stage_watch.recompiles, syncs, clock.peak, batch=batch, backend=backend)  # fmt: skip
            report.check_budget()

        if "train" in stages:
            trainer = Trainer(params, model, example, prior, loss, indices)
            with CompileWatch() as stage_watch:
                trainer.step(0)  # warm-up
                with timed_region(device) as t:
                    for i in range(repeats):
                        trainer.step(1 + i)
            syncs = host_syncs(device, lambda: trainer.step(1 + repeats))
            report.write("train", setting, t["seconds"], repeats, "iteration", t["watch"], stage_watch.recompiles, syncs,
                         t["peak"], batch=params.train.batch, precision=trainer.precision, backend=backend)  # fmt: skip
            generator = trainer.generator
            del trainer
            report.check_budget()
        elif "pairs" in stages:
            generator = Trainer(params, model, example, prior, loss, indices).generator

        if "pairs" in stages:
            gen_path = tmp / f"generator-{setting}.safetensors"
            save_generator(copy.deepcopy(generator).cpu(), gen_path, meta=meta)
            with CompileWatch() as stage_watch:
                batch = setup["batch"]
                if batch is None:  # `auto`: the probe (outside the timed run) picks the batch
                    probe = tmp / f"pairs-probe-{setting}.zarr"
                    batch = _probed(pairs_module, lambda: pairs_module.run_pairs(
                        _params(setup, device, pairs={"count": AUTO_CAP}), gen_path, tmp / "prior.safetensors", probe,
                        progress=False, model=model, force=True), probe)  # fmt: skip
                n = batch * (1 + repeats)
                pair_params = _params(setup, device, pairs={"count": n, "batch_size": batch})
                clock = _stage_blocks(pairs_module, lambda: pairs_module.run_pairs(
                    pair_params, gen_path, tmp / "prior.safetensors", tmp / f"pairs-{setting}.zarr", progress=False, model=model),
                    device)  # fmt: skip
            report.write("pairs", setting, clock.times[-1] - clock.times[0], sum(clock.items[1:]), "pair", clock.watch,
                         stage_watch.recompiles, _loop_syncs(model, setup, batch), clock.peak, batch=batch, backend=backend)  # fmt: skip
            report.check_budget()

        if "distill" in stages:
            d = PAPER["distill"]
            crop, dbatch = setup["distill_crop"] or d["crop"], setup["distill_batch"] or d["batch"]
            student = Student(StudentConfig(d["width"], d["downsamples"], d["blocks"])).to(device)
            disc = PatchDiscriminator().to(device) if d["gan"] > 0 else None
            if backend:
                student.forward = torch.compile(student.forward, backend=backend, dynamic=False)
                if disc is not None:
                    disc.forward = torch.compile(disc.forward, backend=backend, dynamic=False)
            lpips_net = load_lpips(setup["lpips"], device)
            opt = torch.optim.Adam(student.parameters(), lr=d["lr"], betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(disc.parameters(), lr=d["lr"], betas=(0.5, 0.999)) if disc is not None else None
            images = torch.rand(dbatch, 3, crop, crop, device=device)
            sketches = torch.rand(dbatch, 1, crop, crop, device=device)
            step = Distiller(student, opt, lpips_net, disc, opt_d, DistillConfig(**d))

            def iteration() -> None:  # the stage's step and its per-iteration log
                loss_value, _terms = distill_step(step, images, sketches)
                float(loss_value.detach())

            with CompileWatch() as stage_watch:
                iteration()
                with timed_region(device) as t:
                    for _ in range(repeats):
                        iteration()
            report.write("distill", setting, t["seconds"], repeats, "iteration", t["watch"], stage_watch.recompiles,
                         host_syncs(device, iteration), t["peak"], batch=dbatch, crop=crop, backend=backend)  # fmt: skip
            del student, disc, opt, opt_d, step
            report.check_budget()

        if "extract" in stages:
            d = PAPER["distill"]
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            student = Student(StudentConfig(d["width"], d["downsamples"], d["blocks"])).to(device, dtype).eval()
            student = student.to(memory_format=torch.channels_last)
            forward = torch.compile(student, backend=backend, dynamic=False) if backend else student
            side = setup["student_size"]
            for b in setup["student_batches"]:
                x = torch.rand(b, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), CompileWatch() as stage_watch:
                    forward(x)  # warm-up
                    with timed_region(device) as t:
                        for _ in range(repeats * 2):
                            forward(x)
                    syncs = host_syncs(device, lambda: forward(x))  # noqa: B023 - called here
                report.write("extract", setting, t["seconds"], repeats * 2 * b, "image", t["watch"], stage_watch.recompiles,
                             syncs, t["peak"], batch=b, side=side, dtype=str(dtype).removeprefix("torch."), backend=backend)  # fmt: skip
                report.check_budget()
            del student, forward
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for setting in settings:
        run_setting(setting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: the tiny model, tiny sizes, backend eager")
    parser.add_argument("--json", type=Path, help="write one JSON line per measurement here, flushed as it goes")
    parser.add_argument("--budget", type=float, help="stop cleanly (between measurements) after this many seconds")
    parser.add_argument("--settings", default="eager,compiled", help="comma-separated: eager, compiled (in this order)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of " + ", ".join(STAGES))
    parser.add_argument("--backend", help="torch.compile backend (default: inductor on cuda, eager on cpu)")
    args = parser.parse_args(argv)
    setup = dict(CPU if args.device == "cpu" else GPU)
    if args.backend:
        setup["backend"] = args.backend
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device here: run on a GPU, or pass --device cpu for the CPU check", file=sys.stderr)
            return 2
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    device = torch.device(args.device)
    settings = [s for s in ("eager", "compiled") if s in args.settings.split(",")]
    report = Report(args.json, args.budget, device)
    try:
        profile(setup, device, settings, args.stages.split(","), report)
    except OutOfBudget:
        print(f"--budget {args.budget:g} s reached: stopped; every finished measurement is written", flush=True)
    finally:
        if report.file:
            report.file.close()
    print(f"profile run took {time.perf_counter() - report.start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
