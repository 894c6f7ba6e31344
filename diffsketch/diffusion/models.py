"""Loading Stable Diffusion 1.x: a tiny offline stand-in, or the real weights.

``model.id`` is one of
- ``sd15-random``: the full-size SD 1.5 architecture with random weights (shape checks, timings),
- ``tiny``: a seeded, random-initialised model with SD 1.x's block structure (4 UNet up blocks of
  3 ResNets with cross-attention, a VAE decoder with a mid block and 4 up blocks, a 77-token CLIP
  text encoder, SD's scheduler and VAE scaling factor) and the real CLIP BPE tokenizer. No files.
- a local diffusers folder (with ``model_index.json``),
- a single ``.safetensors`` / ``.ckpt`` checkpoint (``model.config_dir`` names a local diffusers
  folder for its configs, since diffusers otherwise fetches them online),
- a Hugging Face hub id (needs the hub or a filled cache).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffsketch.core import DiffsketchError, ModelConfig, content_hash, devices

log = logging.getLogger(__name__)

SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

# The full-size SD 1.5 architecture (for shape checks on the meta device and random-weight timings).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    hidden_act="quick_gelu",
    projection_dim=768,
    vocab_size=49408,
    max_position_embeddings=77,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
# The tiny model: SD 1.5's exact block layout (4 blocks of 2 layers, attention in the first three
# down / last three up blocks, 77-token CLIP), only narrow.
TINY_UNET_CONFIG = SD15_UNET_CONFIG | dict(
    sample_size=16, block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8
)
TINY_VAE_CONFIG = SD15_VAE_CONFIG | dict(block_out_channels=(16, 16, 32, 32), norm_num_groups=8, sample_size=128)
TINY_TEXT_CONFIG = SD15_TEXT_CONFIG | dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, projection_dim=512
)


ARCHITECTURES = {
    "tiny": (TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG),
    "sd15-random": (SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG),
}


class ModelLoadError(DiffsketchError, RuntimeError):
    """The model could not be found or loaded; the message says what was tried and how to fix it."""


@dataclass
class SDModel:
    """The parts of a Stable Diffusion 1.x pipeline that diffsketch uses, on one device and dtype."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object  # a DDIMScheduler
    source: str
    device: torch.device
    dtype: torch.dtype
    compiled: bool = False  # the UNet's and the VAE decoder's forwards are torch.compile'd
    channels_last: bool = False  # UNet and VAE weights (and their inputs) in channels-last memory format
    cache: dict = field(default_factory=dict, repr=False)  # per-model reuse: the empty prompt's embedding, ...

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    def as_pipeline(self):
        """A diffusers StableDiffusionPipeline over the same modules (for reference runs)."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )


def model_device(name: str) -> torch.device:
    """The device ``model.device`` names (:func:`~diffsketch.core.devices.resolve_device`); a CUDA device without a GPU is a :class:`ModelLoadError`."""
    return devices.resolve_device(name, "model.device", ModelLoadError)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def clip_tokenizer():
    """SD's CLIP tokenizer built offline from the BPE vocabulary that open_clip ships.

    Gives the same ids as ``openai/clip-vit-large-patch14``: bos 49406, eos = pad 49407, 77 tokens.
    """
    import open_clip
    from transformers import CLIPTokenizer

    bpe = open_clip.tokenizer.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in bpe.encoder.items()}
    merges = [tuple(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="<|endoftext|>")


def build_random(arch: str = "tiny", seed: int = 0) -> dict:
    """Random-initialised components of ``arch`` ('tiny' or 'sd15-random'); same seed, same weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config, text_config = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**vae_config)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
    )


def _looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith((".", "/", "~"))
        or model_id.endswith((".safetensors", ".ckpt"))
        or model_id.count("/") != 1
    )


def _hint_for_hub(model_id: str) -> str:
    return (
        f"download it once where the hub is reachable (`hf download {model_id} --local-dir models/{model_id.split('/')[-1]}`), "
        "copy the folder here and set model.id to that folder; or use model.id=tiny for an offline run"
    )


def _load_pipeline(cfg: ModelConfig, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    common = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    path = Path(cfg.id).expanduser()
    if path.exists():
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(
                    f"model folder {path} has no model_index.json, so it is not a diffusers pipeline folder; "
                    "point model.id at the folder that holds model_index.json, unet/, vae/, text_encoder/, tokenizer/"
                )
            return StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True, **common)
        if path.suffix not in (".safetensors", ".ckpt"):
            raise ModelLoadError(f"model file {path} is neither .safetensors nor .ckpt")
        if cfg.config_dir is None:
            raise ModelLoadError(
                f"single-file checkpoint {path} needs model.config_dir: a local diffusers folder with the SD 1.x "
                "configs (model_index.json, unet/config.json, ...); without it diffusers would go online for them"
            )
        config_dir = Path(cfg.config_dir).expanduser()
        if not (config_dir / "model_index.json").is_file():
            raise ModelLoadError(f"model.config_dir {config_dir} has no model_index.json; point it at a diffusers folder")
        return StableDiffusionPipeline.from_single_file(
            str(path), config=str(config_dir), local_files_only=True, **common
        )
    if _looks_like_path(cfg.id):
        raise ModelLoadError(
            f"model path {cfg.id!r} does not exist; fix model.id (a diffusers folder, a .safetensors/.ckpt file, "
            "a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5, or 'tiny')"
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return StableDiffusionPipeline.from_pretrained(cfg.id, local_files_only=offline, **common)
    except Exception as err:  # diffusers raises OSError, ValueError or hub errors here
        raise ModelLoadError(
            f"no local path {cfg.id!r} exists, and loading it as a hub id failed ({'offline: HF_HUB_OFFLINE is set, and it is not in the local cache' if offline else type(err).__name__ + ': ' + str(err).splitlines()[0]}); "
            + _hint_for_hub(cfg.id)
        ) from err


# The method's DDIM (method.md §1): the predicted x0 is never clipped, and the last step lands on
# alphas_cumprod[0] rather than on a clean sample. diffusers' DDIM defaults differ (clip_sample=True,
# set_alpha_to_one=True), and SD 1.x hub folders ship a PNDM config that names neither.
DDIM_FIXED = dict(clip_sample=False, set_alpha_to_one=False)


def ddim_scheduler(config):
    """A DDIMScheduler from any loaded scheduler config (SD ships PNDM's), with :data:`DDIM_FIXED`
    whatever the config says; a config that said otherwise is named in a warning."""
    from diffusers import DDIMScheduler

    overridden = {k: config[k] for k, v in DDIM_FIXED.items() if k in config and config[k] != v}
    if overridden:
        log.warning(
            "the model's scheduler config sets %s; diffsketch's DDIM uses %s (the method's sampler)",
            ", ".join(f"{k}={v}" for k, v in overridden.items()),
            ", ".join(f"{k}={v}" for k, v in DDIM_FIXED.items()),
        )
    return DDIMScheduler.from_config(config, **DDIM_FIXED)


def check_model_reachable(cfg: ModelConfig) -> None:
    """Cheap checks on ``model.id`` before any expensive work (paths exist, config folder given)."""
    if cfg.id in ARCHITECTURES:
        return
    path = Path(cfg.id).expanduser()
    if not path.exists() and _looks_like_path(cfg.id):
        raise ModelLoadError(f"model path {cfg.id!r} does not exist; fix model.id or use model.id=tiny")
    if path.is_file() and cfg.config_dir is None:
        raise ModelLoadError(f"single-file checkpoint {path} needs model.config_dir (a local diffusers folder)")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model")


def _hub_revision(model_id: str) -> str:
    """The commit a hub id resolves to: the cached snapshot's (offline), else the hub's answer."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(snapshot_download(model_id, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached: ask the hub (fails offline)
        pass
    try:
        return str(HfApi().model_info(model_id).sha)
    except Exception as err:  # noqa: BLE001 - hub errors have many types for one cause
        raise ModelLoadError(
            f"cannot resolve the revision of hub model {model_id!r} (not in the local cache, and the hub answered "
            f"{type(err).__name__}); " + _hint_for_hub(model_id)
        ) from None


def _folder_files(folder: Path, prefix: str) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES and ".cache" not in p.parts)
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": content_hash(p) for p in files}


def model_terms(cfg: ModelConfig) -> tuple[dict, dict[str, str]]:
    """What a result depends on about the model (:mod:`diffsketch.core.keys`): the resolved settings
    (``model.dtype`` after ``auto``; the id and seed of a built-in random model; the id of a hub model)
    and the model's inputs by content (each weight and config file of a local folder or single
    checkpoint, the resolved revision of a hub model). Paths never enter: a folder moved elsewhere keeps
    its key, a weight file replaced under the same folder changes it.

    >>> from diffsketch.core import ModelConfig
    >>> model_terms(ModelConfig(id="tiny", device="cpu"))
    ({'model.dtype': 'float32', 'model.id': 'tiny', 'model.seed': 0}, {})
    """
    settings = {"model.dtype": str(resolve_dtype(cfg.dtype, model_device(cfg.device))).removeprefix("torch.")}
    if cfg.id in ARCHITECTURES:
        return settings | {"model.id": cfg.id, "model.seed": cfg.seed}, {}
    path = Path(cfg.id).expanduser()
    if path.is_dir():
        inputs = _folder_files(path, "model")
    elif path.is_file():
        inputs = {f"model/{path.name}": content_hash(path)}
        if cfg.config_dir is not None and Path(cfg.config_dir).expanduser().is_dir():
            inputs |= _folder_files(Path(cfg.config_dir).expanduser(), "model.config_dir")
    elif _looks_like_path(cfg.id):
        raise ModelLoadError(f"model path {cfg.id!r} does not exist; fix model.id or use model.id=tiny")
    else:
        return settings | {"model.id": cfg.id}, {"model revision": _hub_revision(cfg.id)}
    total = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    if total > 1 << 30:
        log.info("model %s: %.1f GB of weights hashed once per process for the result keys", cfg.id, total / (1 << 30))
    return settings, inputs


@dataclass
class CompileWatch:
    """Counts what ``torch.compile`` compiled while the context was open (dynamo's compilation metrics).

    Attributes:
        compiles: graphs compiled (first compilations and recompilations).
        recompiles: compilations of a function that already had a compiled graph (a guard failed).
        reasons: the guard failure of each recompilation, as dynamo words it.
        seconds: time spent compiling.

    >>> with CompileWatch() as watch:
    ...     _ = torch.ones(2) * 2  # eager: nothing compiles
    >>> watch.compiles, watch.recompiles
    (0, 0)
    """

    compiles: int = 0
    recompiles: int = 0
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __enter__(self) -> CompileWatch:
        from torch._dynamo.utils import get_compilation_metrics

        self._seen = {id(m) for m in get_compilation_metrics()}
        self._graphs = _graph_count()
        return self

    def __exit__(self, *exc) -> None:
        from torch._dynamo.utils import get_compilation_metrics

        new = [m for m in get_compilation_metrics() if id(m) not in self._seen]
        self.compiles = _graph_count() - self._graphs
        self.reasons = [str(m.recompile_reason) for m in new if getattr(m, "recompile_reason", None)]
        self.recompiles = len(self.reasons)
        self.seconds = sum(getattr(m, "entire_frame_compile_time_s", None) or 0.0 for m in new)


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def resolve_compile(name: str, device: torch.device) -> bool:
    """``model.compile``: ``auto`` compiles on CUDA only (on a CPU inductor takes minutes per shape)."""
    if name == "auto":
        return device.type == "cuda"
    return name == "on"


def use_sdpa(module: torch.nn.Module) -> int:
    """Every attention layer of a diffusers model on PyTorch's fused SDPA kernel
    (``AttnProcessor2_0``); returns how many layers had another processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    other = sum(not isinstance(p, AttnProcessor2_0) for p in processors.values())
    if other:
        module.set_attn_processor(AttnProcessor2_0())
    return other


def install_feature_taps(model: SDModel) -> None:
    """Feature taps on every layer a capture may read (both UNet capture modes, the VAE decoder),
    before any compilation (see :class:`diffsketch.diffusion.features.Taps`)."""
    from diffsketch.diffusion.features import taps, unet_layers, vae_layers

    side = 64 * model.vae_scale_factor  # module paths do not depend on the resolution
    for capture in ("residual", "output"):
        taps(model.unet).install(s.module for s in unet_layers(model.unet.config, side, model.vae_scale_factor, capture))
    taps(model.vae).install(s.module for s in vae_layers(model.vae.config, side))


def apply_fast_paths(
    model: SDModel, compile: bool = False, channels_last: bool | None = None, backend: str = "inductor"
) -> SDModel:
    """The fast paths of the one denoising loop, in place: SDPA attention everywhere, channels-last
    weights (default: on CUDA), feature taps, and with ``compile`` the UNet's and the VAE decoder's
    forwards compiled with ``torch.compile`` (``backend``: inductor; the tests also use ``eager``,
    which traces the same graphs without generating code), with static shapes. The compile itself
    happens on the first call at each new batch shape; :func:`diffsketch.diffusion.sampling.ddim_loop`
    logs that call's time apart. The feature taps are fixed here, before compilation: a change of
    capture settings later never recompiles (:class:`diffsketch.diffusion.features.Taps`).
    """
    switched = use_sdpa(model.unet) + use_sdpa(model.vae)
    if switched:
        log.info("%d attention layers switched to PyTorch SDPA", switched)
    if channels_last is None:
        channels_last = model.device.type == "cuda"
    if channels_last and not model.channels_last:
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
        model.channels_last = True
    install_feature_taps(model)
    if compile and not model.compiled:
        from diffsketch.diffusion.features import taps

        # Static shapes: one graph per batch shape (a stage sees one or two: its batch and a last,
        # shorter one), never a dynamic-batch graph whose guard a later batch could fall outside.
        model.unet.forward = torch.compile(model.unet.forward, backend=backend, dynamic=False)
        model.vae.decoder.forward = torch.compile(model.vae.decoder.forward, backend=backend, dynamic=False)
        taps(model.unet).frozen = taps(model.vae).frozen = True
        model.compiled = True
        model.cache["compile_backend"] = backend  # the pairs stage compiles the generator alike
        log.info("model.compile: UNet and VAE decoder compiled with torch.compile (backend %s) on first use", backend)
    return model


def load_model(cfg: ModelConfig) -> SDModel:
    """Load the model named by ``cfg`` in eval mode, gradients off, with its weights in the run's
    dtype on its device, and the fast paths applied (:func:`apply_fast_paths`)."""
    device = model_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.id in ARCHITECTURES:
        parts = build_random(cfg.id, cfg.seed)
    else:
        pipe = _load_pipeline(cfg, dtype)
        parts = dict(
            unet=pipe.unet,
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            scheduler=ddim_scheduler(pipe.scheduler.config),
        )
    for name in ("unet", "vae", "text_encoder"):
        module = parts[name].to(device).eval().requires_grad_(False)
        if module.dtype != dtype:
            module.to(dtype)
    model = SDModel(**parts, source=cfg.id, device=device, dtype=dtype)
    return apply_fast_paths(model, compile=resolve_compile(cfg.compile, device))
