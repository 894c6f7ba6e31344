import json
import logging

import pytest
import torch

from diffsketch.config import LossConfig
from diffsketch.losses import ALEXNET_FILE, LossSetupError, SketchLoss, load_clip, load_lpips


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny")


@pytest.fixture(scope="module")
def lpips_random():
    return load_lpips("random")


def test_tiny_clip_is_frozen_deterministic_and_differentiable(clip):
    again = load_clip("tiny")
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    e = clip(x)
    assert torch.equal(e, again(x))
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert all(not p.requires_grad for p in clip.parameters())
    e.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    assert clip(torch.rand(1, 1, 40, 40)).shape == e[:1].shape  # sketches: one channel is repeated


def test_clip_normalisation_is_clips_not_imagenets(clip):
    assert torch.allclose(clip.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    assert torch.allclose(clip.std.flatten(), torch.tensor([0.26862954, 0.26130258, 0.27577711]))


def test_clip_offline_errors_and_fallback(caplog):
    with pytest.raises(LossSetupError, match="could not be loaded"):
        load_clip("ViT-B-32:openai")
    with pytest.raises(LossSetupError, match="not found"):
        load_clip("ViT-B-32:/nowhere/ViT-B-32.pt")
    with pytest.raises(LossSetupError, match="unknown open_clip architecture"):
        load_clip("ViT-Bogus:openai")
    with caplog.at_level(logging.WARNING):
        encoder = load_clip("auto")
    assert encoder.name == "tiny" and "not available offline" in caplog.text


def test_clip_local_checkpoint_path(tmp_path):
    """The real path: an open_clip architecture with weights from a local checkpoint file."""
    import open_clip

    from diffsketch.losses import TINY_CLIP

    cfg = tmp_path / "diffsketch-test-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(3)
    model = open_clip.create_model("diffsketch-test-clip")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    encoder = load_clip(f"diffsketch-test-clip:{tmp_path / 'weights.pt'}")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.visual((x - encoder.mean) / encoder.std), dim=-1)
    assert torch.allclose(encoder(x), expected, atol=1e-5)


def test_lpips_offline_fallback_and_real_backbone(tmp_path, monkeypatch, caplog, lpips_random):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(LossSetupError, match=ALEXNET_FILE):
        load_lpips("alex")
    with caplog.at_level(logging.WARNING):
        fallback = load_lpips("auto")
    assert fallback.backbone == "random" and "random AlexNet" in caplog.text

    import torchvision

    torch.manual_seed(7)
    state = torchvision.models.alexnet().state_dict()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / ALEXNET_FILE)
    real = load_lpips("auto")
    assert real.backbone == "alex"
    assert torch.equal(real.net.slice1[0].weight, state["features.0.weight"])


def test_lpips_behaves_like_a_distance(lpips_random):
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    y = torch.rand(1, 3, 64, 64) * 2 - 1
    assert lpips_random(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips_random(x, y).item() > 0
    assert all(not p.requires_grad for p in lpips_random.parameters())


def test_sketch_loss_terms(clip, lpips_random):
    torch.manual_seed(0)
    image, sketch = torch.rand(1, 3, 64, 64), (torch.rand(1, 1, 64, 64) > 0.2).float()
    loss = SketchLoss(LossConfig(), clip, lpips_random, image, sketch)
    assert torch.equal(loss.e_sketch, clip(sketch))  # cached once
    pred = torch.rand(1, 1, 64, 64, requires_grad=True)
    new_pred, new_images = torch.rand(2, 1, 64, 64, requires_grad=True), torch.rand(2, 3, 64, 64)
    total, terms = loss(pred, new_pred, new_images)
    assert set(terms) == {"l1", "lpips", "clip", "across", "within"}
    assert terms["l1"].item() == pytest.approx((pred - sketch).abs().mean().item())
    expected = 30 * terms["l1"] + 15 * terms["lpips"] + 30 * terms["clip"] + terms["across"] + terms["within"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert pred.grad.abs().sum() > 0 and new_pred.grad.abs().sum() > 0

    perfect, terms = loss(sketch, new_pred.detach(), new_images)
    assert terms["l1"].item() == 0 and terms["lpips"].item() == pytest.approx(0, abs=1e-6)
    assert terms["clip"].item() == pytest.approx(0, abs=1e-5)

    only_l1 = SketchLoss(LossConfig(lpips=0, clip=0, across=0, within=0), clip, lpips_random, image, sketch)
    total, terms = only_l1(pred, new_pred, new_images)
    assert set(terms) == {"l1"} and total.item() == pytest.approx(30 * terms["l1"].item())
