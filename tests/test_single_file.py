"""Loading a single-file SD 1.x checkpoint (``model.id`` = a .safetensors / .ckpt file) offline.

The tiny model is written out in the original LDM key layout (``tests/ldm_checkpoint.py``), loaded
back through ``load_model`` -> ``StableDiffusionPipeline.from_single_file`` with a local config
folder, and every weight must come back bit-identical, with no network access.
"""

from __future__ import annotations

import socket

import pytest
import torch

from diffsketch.core.params import ModelConfig
from diffsketch.diffusion.models import ModelLoadError, check_model_reachable, load_model
from ldm_checkpoint import to_ldm_state_dict

MODULES = ("unet", "vae", "text_encoder")


@pytest.fixture
def no_network(monkeypatch):
    """Offline mode on, and any socket connection attempt recorded (and refused)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import; set the constant it actually consults too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:] if args and isinstance(args[0], socket.socket) else args))
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def config_folder(tmp_path, tiny):
    """The tiny pipeline's diffusers folder with its weight files removed: configs and tokenizer only."""
    folder = tmp_path / "config"
    tiny.as_pipeline().save_pretrained(folder)
    weights = [p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt")]
    assert weights, "save_pretrained wrote no weight files?"
    for path in weights:
        path.unlink()
    assert (folder / "model_index.json").is_file() and (folder / "unet" / "config.json").is_file()
    return folder


@pytest.fixture
def ldm_state(tiny):
    return to_ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder)


def _write(state: dict, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path


def _assert_same_weights(loaded, reference):
    for name in MODULES:
        got, want = getattr(loaded, name), getattr(reference, name)
        got_params, want_params = dict(got.named_parameters()), dict(want.named_parameters())
        assert got_params.keys() == want_params.keys(), name
        differing = [
            key
            for key, value in want_params.items()
            if got_params[key].shape != value.shape or not torch.equal(got_params[key], value)
        ]
        assert not differing, f"{name}: {len(differing)} of {len(want_params)} parameters differ, e.g. {differing[:5]}"
        got_buffers, want_buffers = dict(got.named_buffers()), dict(want.named_buffers())
        assert got_buffers.keys() == want_buffers.keys(), name
        for key, value in want_buffers.items():
            assert torch.equal(got_buffers[key], value), f"{name} buffer {key}"


def _public(config) -> dict:
    """A diffusers config without its bookkeeping entries (``_class_name``, ``_use_default_values``, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_the_same_weights(tmp_path, tiny, config_folder, ldm_state, no_network, suffix):
    ckpt = _write(ldm_state, tmp_path / f"sd{suffix}")

    model = load_model(ModelConfig(id=str(ckpt), config_dir=str(config_folder), device="cpu"))

    assert no_network == [], f"network access attempted: {no_network}"
    assert model.source == str(ckpt)
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    _assert_same_weights(model, tiny)
    assert model.vae.config.scaling_factor == tiny.vae.config.scaling_factor
    assert type(model.scheduler) is type(tiny.scheduler)
    assert _public(model.scheduler.config) == _public(tiny.scheduler.config)
    prompt = "a photo of a horse in mud"
    assert model.tokenizer(prompt).input_ids == tiny.tokenizer(prompt).input_ids
    for name in MODULES:
        assert not getattr(model, name).training
        assert not any(p.requires_grad for p in getattr(model, name).parameters())


def test_ldm_layout_round_trips_through_diffusers_converters(tiny, ldm_state):
    """The converter alone: diffusers' own LDM -> diffusers mappings give back every tensor exactly."""
    from diffusers.loaders.single_file_utils import (
        CHECKPOINT_KEY_NAMES,
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        infer_diffusers_model_type,
    )

    assert infer_diffusers_model_type(ldm_state) == "v1"
    assert CHECKPOINT_KEY_NAMES["clip"] in ldm_state
    assert ldm_state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in LDM

    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm_state).items()}
    # SD checkpoints carry CLIP's position_ids buffer (not in recent transformers' state dict); loading ignores it.
    assert torch.equal(clip.pop("embeddings.position_ids"), tiny.text_encoder.embeddings.position_ids)
    converted = {
        "unet": convert_ldm_unet_checkpoint(ldm_state, dict(tiny.unet.config)),
        "vae": convert_ldm_vae_checkpoint(ldm_state, dict(tiny.vae.config)),
        "text_encoder": clip,
    }
    for name, state in converted.items():
        want = getattr(tiny, name).state_dict()
        assert state.keys() == want.keys(), f"{name}: missing {set(want) - set(state)}, extra {set(state) - set(want)}"
        for key, value in want.items():
            assert torch.equal(state[key], value), f"{name} {key}"
    assert sum(len(s) for s in converted.values()) + 1 == len(ldm_state)  # nothing else left over


def test_single_file_without_config_dir_is_refused(tmp_path, ldm_state, no_network):
    ckpt = _write(ldm_state, tmp_path / "sd.safetensors")
    cfg = ModelConfig(id=str(ckpt), device="cpu")

    with pytest.raises(ModelLoadError, match="config_dir"):
        check_model_reachable(cfg)
    with pytest.raises(ModelLoadError, match="config_dir"):
        load_model(cfg)
    assert no_network == []
