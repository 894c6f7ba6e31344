import pytest
import torch

from diffsketch.core.params import ModelConfig
from diffsketch.diffusion.models import ModelLoadError, build_random, clip_tokenizer, ddim_scheduler, load_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_is_seeded_and_deterministic():
    a, b, c = build_random("tiny", 0), build_random("tiny", 0), build_random("tiny", 1)
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(a[name], b[name])
        assert not _same_weights(a[name], c[name])


def test_tiny_has_sd1_block_structure(tiny):
    unet, vae = tiny.unet, tiny.vae
    assert len(unet.up_blocks) == 4
    assert [len(b.resnets) for b in unet.up_blocks] == [3, 3, 3, 3]
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == [False, True, True, True]
    assert len(vae.decoder.up_blocks) == 4 and len(vae.decoder.mid_block.resnets) == 2
    assert tiny.vae_scale_factor == 8 and vae.config.scaling_factor == 0.18215
    assert tiny.text_encoder.config.max_position_embeddings == 77
    sched = tiny.scheduler.config
    assert (sched.beta_start, sched.beta_end, sched.beta_schedule, sched.steps_offset) == (0.00085, 0.012, "scaled_linear", 1)
    tiny.scheduler.set_timesteps(50)
    assert tiny.scheduler.timesteps[0] == 981 and tiny.scheduler.timesteps[-1] == 1


def test_tokenizer_matches_sd_clip_ids():
    import open_clip

    tok = clip_tokenizer()
    text = "a photo of a horse in mud, trending on artstation!"
    ids = tok(text, padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == 49406 and tok.pad_token_id == 49407 == tok.eos_token_id
    reference = open_clip.get_tokenizer("ViT-L-14")([text])[0].tolist()  # pads with 0 instead of eos
    n = ids.index(49407) + 1
    assert ids[:n] == reference[:n]
    assert all(i == 49407 for i in ids[n:])
    assert len(tok) == 49408


def test_local_diffusers_folder_round_trip(tiny, tmp_path):
    tiny.as_pipeline().save_pretrained(tmp_path / "sd")
    loaded = load_model(ModelConfig(id=str(tmp_path / "sd"), device="cpu"))
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(tiny, name), getattr(loaded, name))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.tokenizer("a cat").input_ids == tiny.tokenizer("a cat").input_ids


def test_float16_load(tmp_path, tiny):
    tiny.as_pipeline().save_pretrained(tmp_path / "sd")
    loaded = load_model(ModelConfig(id=str(tmp_path / "sd"), device="cpu", dtype="float16"))
    assert loaded.dtype == torch.float16 and loaded.unet.dtype == torch.float16


@pytest.mark.parametrize(
    "model_id, message",
    [
        ("./no/such/folder", "does not exist"),
        ("/abs/missing/sd.safetensors", "does not exist"),
        ("someone/not-cached-model", "hf download someone/not-cached-model"),
    ],
)
def test_unreachable_models_say_what_was_tried(model_id, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=message):
        load_model(ModelConfig(id=model_id, device="cpu"))


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(ModelConfig(id=str(tmp_path), device="cpu"))


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model(ModelConfig(id="tiny", device="cuda"))


def _save_with_scheduler(tiny, folder, scheduler):
    pipe = tiny.as_pipeline()
    pipe.scheduler = scheduler
    pipe.save_pretrained(folder)
    return folder


def _pred_x0_after_one_step(scheduler) -> torch.Tensor:
    """pred_x0 of one DDIM step from x = 5 with eps = 0: by hand x / sqrt(alpha_bar_t), far above 1."""
    scheduler.set_timesteps(10)
    x = torch.full((1, 4, 2, 2), 5.0)
    return scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x).pred_original_sample


def test_hub_pndm_config_gives_unclipped_ddim(tiny, tmp_path, caplog):
    """SD 1.x folders ship a PNDM scheduler config without clip_sample; diffusers' DDIM default would
    clip the predicted x0 to [-1, 1], which the method never does."""
    from diffusers import PNDMScheduler

    hub_like = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                             set_alpha_to_one=False, steps_offset=1)  # fmt: skip
    loaded = load_model(ModelConfig(id=str(_save_with_scheduler(tiny, tmp_path / "sd", hub_like)), device="cpu"))
    sched = loaded.scheduler
    assert type(sched).__name__ == "DDIMScheduler"
    assert sched.config.clip_sample is False and sched.config.set_alpha_to_one is False
    x0 = _pred_x0_after_one_step(sched)
    t = int(sched.timesteps[0])
    by_hand = 5.0 / sched.alphas_cumprod[t].sqrt()
    assert torch.allclose(x0, torch.full_like(x0, float(by_hand)))
    assert x0.max() > 5  # not clipped
    assert float(sched.final_alpha_cumprod) == pytest.approx(1 - 0.00085)  # alphas_cumprod[0], not 1
    assert "scheduler config sets" not in caplog.text  # nothing was overridden


def test_ddim_config_that_clips_is_overridden_with_a_warning(tiny, tmp_path, caplog):
    from diffusers import DDIMScheduler

    clipping = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=True,
                             set_alpha_to_one=True, steps_offset=1)  # fmt: skip
    folder = _save_with_scheduler(tiny, tmp_path / "sd", clipping)
    with caplog.at_level("WARNING"):
        loaded = load_model(ModelConfig(id=str(folder), device="cpu"))
    # (diffusers' StableDiffusionPipeline itself already resets an explicit clip_sample=True)
    assert "set_alpha_to_one=True" in caplog.text
    assert loaded.scheduler.config.clip_sample is False and loaded.scheduler.config.set_alpha_to_one is False
    assert _pred_x0_after_one_step(loaded.scheduler).max() > 5
    assert float(loaded.scheduler.final_alpha_cumprod) == pytest.approx(1 - 0.00085)

    caplog.clear()
    with caplog.at_level("WARNING"):
        direct = ddim_scheduler(clipping.config)
    assert "clip_sample=True" in caplog.text and direct.config.clip_sample is False
