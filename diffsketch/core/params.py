"""One typed schema for ``params.yaml``.

Every stage and CLI command reads its settings through :func:`load_params`; nothing else parses
YAML. Unknown keys, wrong types, out-of-range or non-finite values and YAML that cannot be read fail
with one message naming the key (its dotted path, ``train.lr``) or the line.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffsketch.core.errors import DiffsketchError

Pool = Annotated[int, Field(ge=1)] | Literal["full"]


MAX_SEED = 2**32 - 1  # seeds (and the per-trajectory / per-pair seeds derived from them) stay within torch's range


def _numeric_only(annotation) -> bool:
    """True for int / float fields (also Annotated, or unions such as ``int | None``) that take no text or bool."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _numeric_only(args[0])
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return bool(kinds) and all(_numeric_only(a) for a in kinds)
    return annotation in (int, float)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # .inf / .nan are never a setting

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value, info):
        # YAML reads yes/no/on/off/true as booleans, and pydantic would take them as 1 and 0
        if isinstance(value, bool) and _numeric_only(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a number, got the YAML boolean {value} (yes/no/on/off/true/false)")
        return value


class ModelConfig(_Section):
    """Which Stable Diffusion to load and where to run it."""

    id: str = Field(
        "tiny",
        description="'tiny' (offline random SD-shaped model), 'sd15-random' (full-size SD 1.5, random weights), a hub id, a local diffusers folder, "
        "or a single .safetensors/.ckpt checkpoint",
    )
    config_dir: str | None = Field(
        None,
        description="local diffusers folder holding the configs for a single-file checkpoint "
        "(without it diffusers goes online to fetch them)",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="initialisation seed of the tiny model")
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the UNet and the VAE decoder (and the generator in pairs): auto = on for cuda, "
        "off on cpu (compiling takes minutes there). Like the device, not part of any result key",
        exclude=True,
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value  # YAML reads on/off as booleans

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "mps") and not (value == "cuda" or value.startswith("cuda:")):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value


class SampleConfig(_Section):
    """The `sample` stage: DDIM trajectories with captured features."""

    prompts: str = Field("data/prompts", description="folder of <class>.txt files, or one .txt file")
    trajectories: int = Field(24, ge=1, description="number of sampled images")
    steps: int = Field(50, ge=1, le=1000, description="DDIM steps")
    guidance: float = Field(5.0, ge=1.0, description="classifier-free guidance scale (1 = no guidance)")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta (0 = deterministic)")
    resolution: int = Field(512, ge=64, description="image side in pixels, a multiple of 64")
    pool: Pool = Field(8, description="features are average-pooled to a pool x pool grid, or 'full'")
    halves: Literal["cond", "uncond", "both"] = Field("cond", description="which CFG half to keep")
    capture: Literal["residual", "output"] = Field(
        "residual",
        description="UNet feature: the ResNet residual branch before the skip addition (the authors' "
        "out_layers) or the full ResNet output",
    )
    decode: Literal["pred_x0", "latent"] = Field(
        "pred_x0",
        description="what the VAE decodes into the image (and its decoder features): the predicted x0 of "
        "the last DDIM step (the authors' code) or the final latent (diffusers' pipeline)",
    )
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        4,
        description="trajectories denoised together; auto = the largest batch that fits the GPU's free memory (measured "
        "probe; 4 on a CPU), recorded in the store so a resumed run keeps the same batch plan",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="trajectory i uses seed + i")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_64(cls, value: int) -> int:
        if value % 64:
            lower, upper = value - value % 64, value - value % 64 + 64
            raise ValueError(f"must be a multiple of 64 (the VAE and UNet downsample by 64); try {lower or 64} or {upper}")
        return value


class AnalyzeConfig(_Section):
    """The `analyze` stage: choosing the representative timesteps."""

    pca_dims: int = Field(25, ge=2)
    k_min: int = Field(2, ge=2)
    k_max: int = Field(20, ge=2)
    k: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        13,
        description="'auto' (best silhouette of the sweep) or a number of timesteps; 1 = a single timestep: the one whose "
        "points sit closest on average to the centre of all points (k-means with k = 1)",
    )
    strategy: Literal["kmeans", "uniform", "random", "fixed"] = "kmeans"
    fixed: list[int] = Field(default_factory=list, description="timesteps for strategy 'fixed'")
    layer_weighting: Literal["equal", "raw"] = "equal"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    pca: Literal["randomized", "incremental"] = Field(
        "randomized",
        description="'randomized' (streamed block Krylov PCA, a few passes over the store) or 'incremental' "
        "(scikit-learn's IncrementalPCA: exact but much slower, kept for comparison)",
    )
    power_iterations: int = Field(2, ge=0, le=20, description="randomized PCA: Krylov iterations, one more pass over the store each")
    oversamples: int = Field(10, ge=0, description="randomized PCA: random directions beyond pca_dims")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the randomized PCA runs: auto = the GPU when one is visible")
    feature_maps: int = Field(
        2,
        ge=0,
        description="trajectories (the store's first complete ones) whose UNet features at the chosen timesteps the "
        "report shows as PCA colour maps; 0 = off. They are sampled again at full resolution with the `model` params, "
        "so this costs N x one sampling (seconds with the tiny model) and loads the model in `analyze`",
    )

    @model_validator(mode="after")
    def _k_range(self) -> AnalyzeConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class ExampleConfig(_Section):
    """The one (image, sketch) example the generator learns the style from."""

    prompt: str = Field("a photo of a horse in mud", description="prompt of the example image (and the CDST pivot condition)")
    seed: int = Field(50, ge=0, le=MAX_SEED, description="seed of the generated example image")
    image: str | None = Field(
        None, description="a real photo to bring in by DDIM inversion; null = generate the image from prompt and seed"
    )
    sketch: str = Field(
        "xdog", description="a built-in style (xdog, canny, dog, hed, anime) applied to the image, or the path of a drawing"
    )
    style_weights: str | None = Field(None, description="weights file for the hed or anime style")


class PriorConfig(_Section):
    """The `prior` stage: a Gaussian over CLIP text embeddings, for CDST's random conditions."""

    captions: str = Field("data/captions", description="folder of .txt files (one caption per line), or one .txt file")
    components: int = Field(512, ge=1, description="PCA components kept (the authors' code: 512); needs more captions than this")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class LossConfig(_Section):
    """Loss weights and the frozen networks behind the perceptual terms."""

    l1: float = Field(30.0, ge=0, description="L1 between the generated and the example sketch")
    lpips: float = Field(15.0, ge=0, description="LPIPS between the generated and the example sketch")
    clip: float = Field(30.0, ge=0, description="CLIP reconstruction, 1 - cos")
    across: float = Field(1.0, ge=0, description="directional CLIP across domains (sketch - image)")
    within: float = Field(1.0, ge=0, description="directional CLIP within domains (new - example)")
    clip_model: str = Field(
        "auto",
        description="'auto' (ViT-B-32:openai when its weights are available, else tiny), 'tiny', "
        "'<open_clip arch>:<pretrained tag or local checkpoint>'",
    )
    lpips_net: Literal["auto", "alex", "random"] = Field(
        "auto", description="'auto' (AlexNet when its torchvision weights are cached, else random), 'alex', 'random'"
    )


class TrainConfig(_Section):
    """The `train` stage: one-shot training of the sketch generator with CDST."""

    iterations: int = Field(1200, ge=1)
    batch: int = Field(1, ge=1, description="freshly sampled images per iteration")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    cdst_horizon: int = Field(1000, ge=0, description="iterations over which conditions drift from the example to random")
    cdst: Literal["on", "off"] = Field(
        "on", description="ablation 'w/o CDST': off = random prior conditions from the first iteration (cdst_horizon unused)"
    )
    vae_fusion: Literal["on", "off"] = Field(
        "on", description="ablation: off = the fusion decoder reads no VAE decoder features (only the aggregated UNet features and RGB)"
    )
    aggregation: Literal["two", "one"] = Field(
        "two", description="ablation: two-level UNet aggregation (lower + higher aggregator) or one aggregator over every layer"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="generator autocast: auto (bf16 on cuda if supported, else fp32), fp32, bf16, fp16 (with loss scaling)"
    )
    checkpoint_every: int = Field(100, ge=1, description="save a resumable checkpoint every N iterations")
    sample_every: int = Field(100, ge=1, description="save a grid of (sampled image, generated sketch) every N iterations")
    max_skips: int = Field(
        10, ge=1, description="stop after this many consecutive steps skipped for a non-finite (NaN/inf) loss or gradient"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds the random conditions, noise and generator initialisation")

    @field_validator("cdst", "vae_fusion", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value  # YAML reads on/off as booleans


class PairsConfig(_Section):
    """The `pairs` stage: (image, sketch) pairs from the trained generator, for distillation."""

    count: int = Field(30000, ge=2, description="pairs to generate (about 30k in the paper, per its reviews)")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        4,
        description="images sampled together; auto = the largest batch that fits the GPU's free memory (measured probe; "
        "4 on a CPU), recorded in the store so a resumed run keeps the same blocks",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="pair i uses prior draw and noise seeds derived from seed and i")


class DistillConfig(_Section):
    """The `distill` stage: the fast student network trained on the pairs."""

    width: int = Field(32, ge=4, description="student channels after the stem (doubled per downsampling)")
    downsamples: int = Field(3, ge=1, le=6)
    blocks: int = Field(4, ge=0, description="residual blocks at the lowest resolution")
    iterations: int = Field(3000, ge=1)
    batch: int = Field(8, ge=1)
    crop: int | None = Field(256, ge=16, description="random square crop side for training; null = whole images")
    lr: float = Field(2e-4, gt=0)
    l1: float = Field(10.0, ge=0)
    lpips: float = Field(1.0, ge=0)
    gan: float = Field(0.0, ge=0, description="PatchGAN (LSGAN) weight; 0 = no discriminator")
    holdout: float = Field(0.1, gt=0, lt=1, description="fraction of the pairs held out to measure the student")
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1, description="save a resumable checkpoint every N iterations")
    max_skips: int = Field(
        10, ge=1, description="stop after this many consecutive steps skipped for a non-finite (NaN/inf) loss or gradient"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)


PhotoName = Literal[
    "astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "clock", "china", "flower", "grace_hopper"
]
GroundTruth = Literal["auto", "xdog", "canny", "dog", "hed", "anime"]
Method = Literal["student", "canny", "dog", "sobel", "xdog", "xdog_cemal", "xdog_anime", "lineart", "hed", "anime"]
NETWORK_STYLES = ("hed", "anime")  # styles / methods that need a weights file (evaluate.weights)


def _unique(values: list, what: str) -> list:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} listed more than once: {', '.join(map(str, repeated))}")
    return values


class EvalDataConfig(_Section):
    """The `eval-data` stage: real photos shipped inside installed packages, copied to data/eval."""

    photos: list[PhotoName] = Field(
        default_factory=lambda: ["astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "china", "flower", "grace_hopper"],
        min_length=1,
        description="photos to copy (see diffsketch/evaluation/data.py for sources and licences)",
    )

    @field_validator("photos")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return _unique(value, "photo")


class DatasetConfig(_Section):
    """One folder of test photos: its images (sorted by name), optionally only the first ``limit``."""

    path: str = Field(description="folder of images (png, jpg, jpeg, bmp, tif, tiff, webp); not searched recursively")
    limit: int | None = Field(None, ge=1, description="use only the first N images (sorted by file name)")
    name: str | None = Field(None, description="label in the report (default: the folder's name)")


class EvaluateConfig(_Section):
    """The `evaluate` stage: the student against weight-free (and optional learned) baselines on real photos."""

    datasets: list[DatasetConfig] = Field(
        default_factory=lambda: [DatasetConfig(path="data/eval")],
        min_length=1,
        description="test folders: a path, or {path, limit, name}",
    )
    ground_truth: GroundTruth = Field(
        "auto",
        description="the style's extractor run on each test photo (the paper's protocol); "
        "auto = example.sketch when that is a built-in style",
    )
    methods: list[Method] = Field(
        default_factory=lambda: ["student", "canny", "dog", "sobel", "xdog", "xdog_cemal", "xdog_anime", "lineart"],
        min_length=1,
        description="methods compared; the ground truth's own extractor is left out",
    )
    weights: dict[Literal["hed", "anime"], str] = Field(
        default_factory=dict, description="weights files of hed / anime, for the ground truth or as learned baselines"
    )
    size: int = Field(512, ge=16, description="photos are downscaled so the long side is at most this (pixels)")
    line_threshold: float | Literal["otsu"] = Field(
        0.5, description="sketch values below this are line pixels for the edge metrics; 'otsu' = per image"
    )
    tolerance: float = Field(
        0.0075, gt=0, lt=1, description="F-score match distance as a fraction of the image diagonal (BSDS maxDist)"
    )
    lpips: Literal["auto", "on", "off"] = Field(
        "auto", description="LPIPS needs AlexNet weights: auto = when cached (else skipped and said so), on = required"
    )
    grid: int = Field(6, ge=0, description="photos shown in the report's side-by-side grid")

    @field_validator("datasets", mode="before")
    @classmethod
    def _paths_as_datasets(cls, value):
        if isinstance(value, (str, Path)):
            value = [value]
        if isinstance(value, list):
            return [{"path": str(v)} if isinstance(v, (str, Path)) else v for v in value]
        return value

    @field_validator("lpips", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value  # YAML reads on/off as booleans

    @field_validator("methods")
    @classmethod
    def _no_repeated_methods(cls, value: list[str]) -> list[str]:
        return _unique(value, "method")

    @field_validator("line_threshold")
    @classmethod
    def _threshold(cls, value):
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("must be between 0 and 1 (exclusive), or 'otsu'")
        return value

    @model_validator(mode="after")
    def _learned_need_weights(self) -> EvaluateConfig:
        missing = [m for m in self.methods if m in NETWORK_STYLES and m not in self.weights]
        if missing:
            raise ValueError(
                f"method(s) {', '.join(missing)} need weights: set evaluate.weights.{missing[0]} to the network's checkpoint file"
            )
        return self


class LaunchConfig(_Section):
    """How the `sample` and `pairs` stages spread over processes. Results do not depend on it, so no stage lists it."""

    processes: int = Field(1, ge=1, description="worker processes on this machine (one per GPU); > 1 runs the stage under torchrun")
    args: list[str] = Field(
        default_factory=list,
        description="extra torchrun arguments, e.g. [--nnodes, '2', --node_rank, '0', --master_addr, host0, --master_port, '29500']",
    )


class Params(_Section):
    threads: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        description="CPU threads of PyTorch and the BLAS / OpenMP libraries in every stage: auto = the cores this "
        "process may use (CPU affinity and cgroup quota; OMP_NUM_THREADS when set) less those other processes keep "
        "busy when the stage starts (all of them when every core is busy), or a number; idle threads sleep rather "
        "than spin. Not part of any result key. --threads overrides it per command",
        exclude=True,
    )
    model: ModelConfig = ModelConfig()
    sample: SampleConfig = SampleConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    example: ExampleConfig = ExampleConfig()
    prior: PriorConfig = PriorConfig()
    losses: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    pairs: PairsConfig = PairsConfig()
    distill: DistillConfig = DistillConfig()
    eval_data: EvalDataConfig = EvalDataConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    launch: LaunchConfig = LaunchConfig()


class ParamsError(DiffsketchError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message says which key and how to fix it."""


_SHOWN = 80  # characters of an offending value quoted in a message


def _shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _key(loc: tuple, data: Any, missing: bool) -> str:
    """The dotted params key (``train.lr``, ``evaluate.datasets.0.path``) of a pydantic error location.

    Pydantic's location also holds the union member it tried (``constrained-int``, ``literal['full']``)
    and dict-key markers (``[key]``). Only the parts that are keys or list indices of the input ``data``
    are kept, and, for a ``missing`` error, the last part: the key that should be there.
    """
    parts, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and (part in node or (missing and i == len(loc) - 1)):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def _format_errors(err: ValidationError, source: str, data: Any) -> str:
    """One line per offending key; what pydantic says about each member of a union is joined into it."""
    problems: dict[str, tuple[list[str], Any]] = {}
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/parameters.md)"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        messages, _ = problems.setdefault(_key(e["loc"], data, e["type"] == "missing"), ([], e.get("input")))
        if msg not in messages:
            messages.append(msg)
    lines = [f"{source} is invalid:"]
    lines += [f"  - {key}: {'; or '.join(messages)} (got {_shown(value)})" for key, (messages, value) in problems.items()]
    return "\n".join(lines)


def parse_params(data: dict[str, Any] | None, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source, data or {})) from None


def _located(role: str, path: list[str], line: int | None) -> str:
    """``the value of train.lr (line 42)``, ``the key train.2020-13-45 (line 3)``, or ``the value`` (of a one-line text)."""
    key = ".".join(path)
    where = f"the key {key}" if role == "key" else f"the value of {key}" if key else "the value"
    return where + (f" (line {line})" if line else "")


def _unbuildable(text: str) -> str:
    """The first YAML value (or key) that parses but cannot be built, e.g. a date such as 2020-13-45 or
    ``!!int x``: ``the value of train.lr (line 42)``."""
    loader = yaml.SafeLoader(text)
    try:
        stack, seen = [(loader.get_single_node(), [], "value")], set()
        while stack:
            node, path, role = stack.pop()
            if node is None or id(node) in seen:  # an empty document; an alias seen before
                continue
            seen.add(id(node))
            if isinstance(node, yaml.MappingNode):
                for key, value in reversed(node.value):
                    name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                    stack += [(value, [*path, name], "value"), (key, [*path, name], "key")]
            elif isinstance(node, yaml.SequenceNode):
                stack += [(child, [*path, str(i)], "value") for i, child in reversed(list(enumerate(node.value)))]
            else:
                try:
                    loader.construct_object(node, deep=True)
                except Exception:  # noqa: BLE001 - the failure the caller reports
                    return _located(role, path, node.start_mark.line + 1 if "\n" in text.strip() else None)
    except Exception:  # noqa: BLE001 - cannot be located (e.g. nested too deep): the caller still reports the error
        pass
    finally:
        loader.dispose()
    return "a value"


def _error_line(err: yaml.YAMLError, text: str) -> str:
    """`` (line N)`` where PyYAML stopped, or nothing when it does not say."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f" (line {mark.line + 1})"
    position = getattr(err, "position", None)  # a reader error: a character YAML does not allow
    if position is None:
        return ""
    line = text.count("\n", 0, position) + 1
    return f" (line {line})"


def _read_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text``; a failure is a ParamsError naming ``where`` and the line (or the key)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{where} is not valid YAML{_error_line(err, text)}: {err}") from None
    except Exception as err:  # noqa: BLE001 - PyYAML's value constructors raise ValueError, AttributeError, ...
        raise ParamsError(
            f"{where}: {_unbuildable(text)} cannot be read ({err}); quote it if it is meant as text"
        ) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a raw params dict."""
    data = copy.deepcopy(data or {})
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                above = ".".join(parents[: depth + 1])
                raise ParamsError(f"--set {item}: {above} is {_shown(node)}, not a section; set {above}=... instead")
        node[leaf] = _read_yaml(raw, f"--set {item}")
    return data


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found; run from the project root or pass --params PATH")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text ({err}); save it as UTF-8") from None
    except OSError as err:
        raise ParamsError(f"{path} cannot be read ({err})") from None
    data = _read_yaml(text, str(path))
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path} must be a mapping of sections (model, sample, ...), not {_shown(data)}")
    return parse_params(apply_overrides(data or {}, overrides or []), str(path))
