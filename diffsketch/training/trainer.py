"""The `train` stage: one-shot training of the sketch generator with CDST (method.md §4, §5).

Every iteration samples ``train.batch`` fresh images under a CDST condition, keeping only the
representative timesteps' features in memory, runs the generator on the example's features and
on the new ones, and takes an Adam step on the weighted losses. Everything random in iteration
``i`` (the prior draw, the noise) comes from seeds derived from ``train.seed`` and ``i``, so a run
resumed from a checkpoint (weights, Adam moments, loss scaler) ends with exactly the weights of an
uninterrupted one.

Outputs: ``models/generator.safetensors`` + ``.json``, resumable checkpoints, and a dvclive folder
(loss curves for ``dvc plots``, the running count of steps skipped for a non-finite loss or gradient,
``train/skipped_steps``, sample grids, example images).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffsketch.core import DiffsketchError, Params, ResultKey, __version__, batching, file_inputs, result_key
from diffsketch.diffusion import (
    Capture,
    SampleResult,
    SDModel,
    check_model_reachable,
    initial_noise,
    load_model,
    model_terms,
    sample_conditions,
    unet_layers,
    vae_layers,
)
from diffsketch.training.cdst import cdst_condition, cdst_weight
from diffsketch.training.checkpoint import (
    NonFiniteGuard,
    check_finite_weights,
    checkpoint_meta,
    load_module,
    load_optimizer,
    module_tensors,
    open_live,
    optimizer_tensors,
    resume_point,
    save_checkpoint,
    trim_live,
)
from diffsketch.training.example import Example, build_example, check_example, inputs_from_result
from diffsketch.training.generator import GeneratorInputs, SketchGenerator, save_generator
from diffsketch.training.losses import SketchLoss, load_clip, load_lpips
from diffsketch.training.prior import TextPrior

log = logging.getLogger(__name__)


class TrainInputError(DiffsketchError, ValueError):
    """A training input is unusable; the message names it and the fix."""


@dataclass(frozen=True)
class TrainPaths:
    timesteps: Path = Path("data/timesteps.json")
    prior: Path = Path("models/prior.safetensors")
    generator: Path = Path("models/generator.safetensors")
    checkpoints: Path = Path("models/checkpoints")
    live: Path = Path("reports/train")


def read_timesteps(path: Path, params: Params) -> list[int]:
    """The DDIM step indices chosen by `analyze`, checked against this run's model and steps."""
    if not path.is_file():
        raise TrainInputError(f"{path} not found; run the analyze stage first (`dvc repro analyze`)")
    try:
        data = json.loads(path.read_text())
        indices = [int(i) for i in data["ddim_indices"]]
    except (ValueError, KeyError, TypeError) as err:
        raise TrainInputError(f"{path} is not a timesteps file written by `diffsketch analyze` ({err}); rerun analyze") from None
    if data.get("model") != params.model.id:
        raise TrainInputError(
            f"{path} was analysed for model {data.get('model')!r} but params say model.id={params.model.id!r}; "
            "rerun sample and analyze for this model (`dvc repro`)"
        )
    if data.get("steps") != params.sample.steps or not indices or max(indices) >= params.sample.steps:
        raise TrainInputError(
            f"{path} indexes a {data.get('steps')}-step DDIM schedule but sample.steps={params.sample.steps}; rerun analyze"
        )
    return sorted(indices)


def _seed(params: Params, iteration: int, slot: int) -> int:
    """The seed of draw ``slot`` (0: the prior, 1..: the noise of each image) in ``iteration``."""
    return params.train.seed * 1_000_003 + iteration * 1_009 + slot


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return name


def train_key(params: Params, indices: list[int], prior_path: Path, clip: str, lpips_backbone: str, precision: str) -> ResultKey:
    """What the generator's numbers depend on (:mod:`diffsketch.core.keys`): the model by content, the
    sampler settings training reuses, the example, the losses and training settings with their
    ``auto`` choices resolved (``clip``, ``lpips_backbone``, ``precision``: what was really loaded), the
    chosen timesteps, and the example's and prior's files by content (never their paths)."""
    model_settings, model_inputs = model_terms(params.model)
    ex = params.example
    files = {"prior": prior_path, "example.image": ex.image, "example.style_weights": ex.style_weights}
    if Path(ex.sketch).is_file():  # a drawing; otherwise a style name, kept as a setting
        files["example.sketch"] = ex.sketch
    arch, _, weights = clip.partition(":")
    if weights and Path(weights).is_file():  # a local CLIP checkpoint: by content
        files["losses.clip_model"], clip = weights, f"{arch}:<file>"
    sample = params.sample.model_dump(include={"steps", "guidance", "eta", "resolution", "capture", "decode"})
    return result_key(
        {"sample": sample, "example": ex, "losses": params.losses, "train": params.train},
        resolved={
            **model_settings,
            "losses.clip_model": clip,
            "losses.lpips_net": lpips_backbone,
            "train.precision": precision,
            "timesteps": indices,
        },
        drop=[f"example.{name.split('.')[-1]}" for name in files if name.startswith("example.")],
        inputs={**model_inputs, **file_inputs(files)},
    )


@dataclass
class TrainStep:
    """What one training iteration gives back.

    Attributes:
        metrics: the loss terms, ``loss``, ``cdst_weight``, ``skipped_steps`` and the seconds spent
            sampling, in the generator and in the losses (``time_*``).
        images: the iteration's generated images (B, 3, H, W) in [0, 1], on the model's device.
        sketches: the generator's sketches of them (B, 1, H, W), detached.
        example_sketch: the generator's sketch of the example image (1, 1, H, W), detached.
    """

    metrics: dict[str, float]
    images: torch.Tensor
    sketches: torch.Tensor
    example_sketch: torch.Tensor


class Trainer:
    """Holds the frozen SD model and losses, the generator and its optimiser; ``step(i)`` trains once."""

    def __init__(self, params: Params, model: SDModel, example: Example, prior: TextPrior, loss: SketchLoss, indices: list[int]):
        self.params, self.model, self.example, self.prior, self.loss = params, model, example, prior, loss
        self.indices = indices
        res = params.sample.resolution
        self.unet_specs = unet_layers(model.unet.config, res, model.vae_scale_factor, params.sample.capture)
        self.vae_specs = vae_layers(model.vae.config, res)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.train.seed)
            self.generator = SketchGenerator(self.unet_specs, self.vae_specs, len(indices),
                                             vae_fusion=params.train.vae_fusion == "on", aggregation=params.train.aggregation)
        self.generator.to(model.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=params.train.lr)
        self.precision = resolve_precision(params.train.precision, model.device)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(model.device.type, enabled=self.precision == "fp16")
        self.guard = NonFiniteGuard(params.train.max_skips, "train", NONFINITE_CAUSES)
        self.halving = batching.Halving(params.train.batch, model.device, "train")  # out-of-memory recovery

    @property
    def cdst_horizon(self) -> int:
        """CDST's horizon; ``train.cdst: off`` (the "w/o CDST" ablation) is horizon 0: random conditions from iteration 0."""
        return self.params.train.cdst_horizon if self.params.train.cdst == "on" else 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def sample_batch(self, iteration: int):
        """Fresh images under the CDST condition of ``iteration``, with features at the chosen steps.

        Runs without autograd on the fast path of the one denoising loop; everything it returns
        (features, images) stays on the model's device. Work shared by every iteration is done once:
        the example's condition (``self.example.cond``) and features (``self.example.inputs``) are
        encoded and kept on the device when the trainer is built, and the unconditional half's
        empty-prompt embedding is encoded once per model (:func:`diffsketch.diffusion.sampling.empty_embedding`).
        """
        p = self.params
        cond_random = self.prior.sample(p.train.batch, torch.Generator().manual_seed(_seed(p, iteration, 0)))
        cond = cdst_condition(self.example.cond, cond_random.to(self.model.device), iteration, self.cdst_horizon)
        seeds = [_seed(p, iteration, 1 + b) for b in range(p.train.batch)]
        noise = initial_noise(self.model, seeds, p.sample.resolution)
        capture = Capture(unet=self.unet_specs, vae=self.vae_specs, halves="both", keep=self.indices, on_cpu=False)
        parts = self.halving.chunks(range(p.train.batch), lambda items: sample_conditions(
            self.model,
            cond[items].to(self.model.dtype),
            noise[items],
            steps=p.sample.steps,
            guidance=p.sample.guidance,
            eta=p.sample.eta,
            seeds=[seeds[b] for b in items],
            capture=capture,
            decode=p.sample.decode,
        ))  # fmt: skip  # out of memory: sampled in halves (each image has its own seeds)
        return SampleResult.cat([result for _, result in parts])

    def _backward(self, inputs: GeneratorInputs, size: int, sync):
        """Generator forward, losses and backward over the batch in micro-batches of at most ``size``
        images, gradients accumulated: the example's terms once, the batch terms (means over images)
        weighted by each micro-batch's share, so the gradient is the full batch's up to float summation
        order. Returns (loss, terms, example sketch, sketches, generator seconds)."""
        n, example_terms = inputs.batch, ("l1", "lpips", "clip")  # the terms of the example alone
        self.optimizer.zero_grad(set_to_none=True)
        total, terms, sketches, seconds = 0.0, {}, [], 0.0
        for j, part in enumerate(batching.micro_batches(n, size)):
            share = (part.stop - part.start) / n
            t = time.perf_counter()
            with self._autocast():
                if j == 0:
                    pred_example = self.generator(self.example.inputs)
                pred_new = self.generator(_rows(inputs, part))
            sync()
            seconds += time.perf_counter() - t
            part_total, part_terms = self.loss(pred_example if j == 0 else pred_example.detach(), pred_new, inputs.rgb[part].float() / 2 + 0.5)
            if share == 1:  # one piece: the full batch as it is
                self.scaler.scale(part_total).backward()
                return part_total, part_terms, pred_example, pred_new, seconds
            example = sum(self.loss.weights[k] * v for k, v in part_terms.items() if k in example_terms)
            objective = share * (part_total - example) + (example if j == 0 else 0.0)
            self.scaler.scale(objective).backward()
            total = total + objective.detach()
            terms = {k: v.detach() if k in example_terms else terms.get(k, 0.0) + share * v.detach() for k, v in part_terms.items()}
            sketches.append(pred_new.detach())
        return total, terms, pred_example, torch.cat(sketches), seconds

    def step(self, iteration: int) -> TrainStep:
        """One training iteration: the loss terms, the CDST weight, the time of each part, and the sketches made."""
        device = self.model.device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        batch = self.sample_batch(iteration)
        new_inputs = inputs_from_result(batch, self.model.device)
        sync()
        t1 = time.perf_counter()
        self.generator.train()
        # out of memory: the forward and backward redone in micro-batches of half the size
        total, terms, pred_example, pred_new, generator_s = self.halving.run(lambda size: self._backward(new_inputs, size, sync))
        t2 = t1 + generator_s
        if self.scaler.is_enabled():  # fp16: the loss scaler skips inf/NaN steps itself and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.guard.ok(iteration, total, self.generator.parameters()):
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        record = {name: float(value.detach()) for name, value in terms.items()}
        record.update(loss=float(total.detach()), cdst_weight=cdst_weight(iteration, self.cdst_horizon))
        record.update(time_sampling=t1 - t0, time_generator=t2 - t1, time_losses=t3 - t2, skipped_steps=self.guard.skipped)
        return TrainStep(record, images=batch.images, sketches=pred_new.detach(), example_sketch=pred_example.detach())

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path, iteration: int, key: ResultKey) -> Path:
        tensors = {**module_tensors("generator", self.generator), **optimizer_tensors("optimizer", self.optimizer)}
        meta = dict(key=key.digest, record=key.record, scaler=json.dumps(self.scaler.state_dict()), guard=self.guard.state())
        return save_checkpoint(folder, iteration, tensors, meta)  # atomic; refuses non-finite weights

    def load_checkpoint(self, path: Path) -> int:
        tensors = load_file_on(path, self.model.device)
        load_module(self.generator, tensors, "generator")
        load_optimizer(self.optimizer, tensors, "optimizer")
        meta = checkpoint_meta(path)
        self.scaler.load_state_dict(json.loads(meta["scaler"]))
        self.guard.load(meta.get("guard"))
        return int(meta["iteration"])


NONFINITE_CAUSES = (
    "a learning rate too high for these settings (lower train.lr), fp16 overflow (set train.precision to fp32 or bf16), "
    "or a broken example image/sketch (check data/example)"
)


def _rows(inputs: GeneratorInputs, rows: slice) -> GeneratorInputs:
    """The generator inputs of the images ``rows``."""
    return GeneratorInputs(
        unet={k: v[rows] for k, v in inputs.unet.items()}, vae={k: v[rows] for k, v in inputs.vae.items()}, rgb=inputs.rgb[rows]
    )


def load_file_on(path: Path, device) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def _uint8(image: torch.Tensor):
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8 array."""
    image = image.detach().float().cpu().clamp(0, 1).expand(3, -1, -1)
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def _grid(images: torch.Tensor, sketches: torch.Tensor, example: Example, pred_example: torch.Tensor):
    """Top row: example image, target, prediction; then one row per sampled (image, sketch)."""
    from torchvision.utils import make_grid

    rgb = lambda s: s.detach().float().cpu().expand(-1, 3, -1, -1)  # noqa: E731
    images = images.detach().float().cpu()
    rows = [example.image.cpu(), rgb(example.sketch), rgb(pred_example)]
    for image, sketch in zip(images, sketches):
        rows += [image[None], rgb(sketch[None]), torch.ones_like(image[None])]
    return _uint8(make_grid(torch.cat(rows).clamp(0, 1), nrow=3, padding=2, pad_value=1.0))


def check_train_inputs(params: Params, paths: TrainPaths) -> tuple[list[int], TextPrior]:
    """Everything checkable before the model loads: timesteps, prior, example. Returns the
    representative step indices and the loaded prior."""
    indices = read_timesteps(paths.timesteps, params)
    prior = TextPrior.load(paths.prior)
    if prior.meta.get("model") != params.model.id:
        raise TrainInputError(
            f"{paths.prior} was fitted with model {prior.meta.get('model')!r} but params say model.id={params.model.id!r}; "
            "rerun the prior stage"
        )
    check_example(params)
    return indices, prior


def run_train(
    params: Params,
    paths: TrainPaths = TrainPaths(),
    overwrite: bool = False,
    progress: bool = True,
    model: SDModel | None = None,
    on_iteration=None,
) -> dict:
    """Train (or resume) the generator; returns the last iteration's record.

    Checkpoints live in ``paths.checkpoints/<key>`` (:func:`~diffsketch.training.checkpoint.resume_point`);
    ``overwrite`` deletes every checkpoint there (of any settings) and starts afresh.
    ``on_iteration(i, record)`` is called after each iteration (tests use it to interrupt a run).
    """
    cfg = params.train
    indices, prior = check_train_inputs(params, paths)
    if model is None:
        check_model_reachable(params.model)
        model = load_model(params.model)
    clip = load_clip(params.losses.clip_model, model.device)
    lpips_net = load_lpips(params.losses.lpips_net, model.device)
    key = train_key(params, indices, paths.prior, clip.name, lpips_net.backbone, resolve_precision(cfg.precision, model.device))
    folder, checkpoint = resume_point(paths.checkpoints, key, cfg.iterations, "train", overwrite)

    unet_specs = unet_layers(model.unet.config, params.sample.resolution, model.vae_scale_factor, params.sample.capture)
    vae_specs = vae_layers(model.vae.config, params.sample.resolution)
    example = build_example(model, params, unet_specs, vae_specs, indices, progress)
    loss = SketchLoss(params.losses, clip, lpips_net, example.image, example.sketch).to(model.device)
    trainer = Trainer(params, model, example, prior, loss, indices)

    start = 0
    if checkpoint is not None:
        start = trainer.load_checkpoint(checkpoint)
        log.info("resuming from %s (iteration %d)", checkpoint, start)
    else:
        shutil.rmtree(paths.live, ignore_errors=True)
    if start > 0:
        trim_live(paths.live, start)
    live = open_live(paths.live, resume=start > 0)
    live.step = start
    # the networks the CLIP and LPIPS losses really used, in the metrics file (a random fallback is visible there)
    live.summary.update(clip=clip.name, lpips_backbone=lpips_net.backbone)
    if start == 0:
        live.log_params(dict(clip=clip.name, lpips_backbone=lpips_net.backbone, precision=trainer.precision, timesteps=indices))
        live.log_image("example/image.png", _uint8(example.image[0]))
        live.log_image("example/sketch.png", _uint8(example.sketch[0]))

    record: dict = {}
    bar = tqdm(range(start, cfg.iterations), desc="training", initial=start, total=cfg.iterations, disable=not progress)
    for i in bar:
        result = trainer.step(i)
        record = result.metrics
        for name in ("loss", *SketchLoss.TERMS, "cdst_weight", "skipped_steps"):  # skipped_steps: the guard's running count
            if name in record:
                live.log_metric(f"train/{name}", record[name])
        bar.set_postfix(loss=f"{record['loss']:.3f}", l1=f"{record['l1']:.3f}")
        done = i + 1
        if done % cfg.sample_every == 0 or done == cfg.iterations:
            grid = _grid(result.images, result.sketches, example, result.example_sketch)
            live.log_image(f"samples/iter_{done:06d}.png", grid)
        live.next_step()
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            trainer.save_checkpoint(folder, done, key)
        if on_iteration is not None:
            on_iteration(i, record)
    live.end()

    meta = dict(
        model=params.model.id,
        resolution=params.sample.resolution,
        steps=params.sample.steps,
        guidance=params.sample.guidance,
        capture=params.sample.capture,
        decode=params.sample.decode,
        ddim_indices=indices,
        example=params.example.model_dump(mode="json"),
        iterations=cfg.iterations,
        precision=trainer.precision,
        clip=clip.name,
        lpips_backbone=lpips_net.backbone,
        key=key.digest,
        skipped_steps=trainer.guard.skipped,
        version=__version__,
    )
    check_finite_weights(trainer.generator, "the trained generator")
    save_generator(trainer.generator, paths.generator, meta=meta)
    return record
