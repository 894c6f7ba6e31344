import json
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffsketch.core.params import LossConfig
from diffsketch.training.losses import ALEXNET_FILE, TINY_CLIP, LossSetupError, SketchLoss, load_clip, load_lpips

# CLIP's preprocessing statistics (OpenAI's CLIP repository, clip/clip.py), written out here so that
# no test takes them from the code under test; ImageNet's are the authors' mistake (method.md §9.7).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny")


@pytest.fixture(scope="module")
def lpips_random():
    return load_lpips("random")


@pytest.fixture(scope="module")
def local_clip(tmp_path_factory):
    """A tiny open_clip architecture registered as ``diffsketch-test-clip`` (and its
    ``-quickgelu`` twin) with seeded random weights in a local file: the real loading path, offline."""
    import open_clip

    folder = tmp_path_factory.mktemp("test-clip")
    (folder / "diffsketch-test-clip.json").write_text(json.dumps(TINY_CLIP))
    (folder / "diffsketch-test-clip-quickgelu.json").write_text(json.dumps(dict(TINY_CLIP, quick_gelu=True)))
    open_clip.add_model_config(folder)
    torch.manual_seed(3)
    model = open_clip.create_model("diffsketch-test-clip")
    torch.save(model.state_dict(), folder / "weights.pt")
    return model.eval(), folder / "weights.pt"


def activations(module: nn.Module) -> set[type]:
    """The kinds of GELU a built tower uses."""
    from open_clip.transformer import QuickGELU

    return {type(m) for m in module.modules() if isinstance(m, (nn.GELU, QuickGELU))}


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
    assert torch.allclose(clip.mean.flatten(), torch.tensor(OPENAI_CLIP_MEAN))
    assert torch.allclose(clip.std.flatten(), torch.tensor(OPENAI_CLIP_STD))


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


def test_offline_clip_fallback_says_one_warning_and_no_error(caplog):
    """Without the CLIP weights open_clip logs ``ERROR root: Failed to download weights``; the run
    shows only our one WARNING (what is used instead, what it means), and the root logger is left as it was."""
    root = logging.getLogger()
    filters = list(root.filters)
    with caplog.at_level(logging.DEBUG):
        encoder = load_clip("auto")
    assert encoder.name == "tiny"
    assert [r.levelname for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r.name for r in caplog.records if r.name == "root"] == []  # open_clip's INFO lines too
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["diffsketch.training.losses"]
    message = warnings[0].getMessage()
    assert "tiny random CLIP" in message and "losses.clip_model" in message and "directional" in message
    assert root.filters == filters

    handlers = root.handlers[:]
    root.handlers.clear()  # a program that configured no logging: open_clip's logging.error would add a stderr handler
    try:
        load_clip("auto")
        assert root.handlers == [] and root.filters == filters
    finally:
        root.handlers[:] = handlers


def test_clip_local_checkpoint_path_uses_clips_normalisation(local_clip):
    """The real path: an open_clip architecture with weights from a local checkpoint file. The
    expected embeddings use CLIP's statistics written out above, not the encoder's own buffers."""
    import open_clip

    model, weights = local_clip
    assert open_clip.constants.OPENAI_DATASET_MEAN == OPENAI_CLIP_MEAN
    assert open_clip.constants.OPENAI_DATASET_STD == OPENAI_CLIP_STD
    encoder = load_clip(f"diffsketch-test-clip:{weights}")
    assert encoder.name == f"diffsketch-test-clip:{weights}" and encoder.size == 32
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)  # resized to the model's 32 px first
    resized = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = F.normalize(model.visual((resized - mean) / std), dim=-1)
        imagenet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        imagenet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        imagenet = F.normalize(model.visual((resized - imagenet_mean) / imagenet_std), dim=-1)
    assert (expected - imagenet).abs().max() > 1e-3  # ImageNet's statistics would be told apart
    assert torch.allclose(encoder(x), expected, atol=1e-5)

    # open_clip's own evaluation transform on a PIL image already at the input size (no resize).
    from PIL import Image

    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8)
    reference = open_clip.image_transform(32, is_train=False)(Image.fromarray(pixels.numpy()))
    with torch.no_grad():
        expected = F.normalize(model.visual(reference[None]), dim=-1)
    assert torch.allclose(encoder(pixels.permute(2, 0, 1)[None] / 255), expected, atol=1e-5)


def test_quick_gelu_follows_the_pretrained_tags_metadata(local_clip, monkeypatch):
    """Tags marked ``quick_gelu`` (how the weights were trained) build QuickGELU towers, others GELU;
    a local file keeps the architecture's activation (``-quickgelu`` names the QuickGELU twin)."""
    import open_clip
    from open_clip.transformer import QuickGELU

    _, weights = local_clip
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        "diffsketch-test-clip",
        {"quick": dict(file=str(weights), quick_gelu=True), "plain": dict(file=str(weights))},
    )
    quick = load_clip("diffsketch-test-clip:quick")
    assert activations(quick.visual) == {QuickGELU} and quick.quick_gelu
    plain = load_clip("diffsketch-test-clip:plain")
    assert activations(plain.visual) == {nn.GELU} and not plain.quick_gelu
    assert activations(load_clip(f"diffsketch-test-clip:{weights}").visual) == {nn.GELU}
    from_file = load_clip(f"diffsketch-test-clip-quickgelu:{weights}")
    assert activations(from_file.visual) == {QuickGELU} and from_file.quick_gelu
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(quick(x), from_file(x))  # same weights, same activation
    assert not torch.allclose(quick(x), plain(x), atol=1e-4)  # QuickGELU is not GELU
    assert not load_clip("tiny").quick_gelu


@pytest.fixture(scope="module")
def vit_b32_weights(tmp_path_factory):
    """Random ViT-B-32 weights in a local file, standing in for the (offline unreachable) download."""
    import open_clip

    path = tmp_path_factory.mktemp("vit-b-32") / "ViT-B-32-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), path)
    return path


def test_openai_vit_b32_is_built_with_quick_gelu(vit_b32_weights, monkeypatch):
    """OpenAI's CLIP was trained with QuickGELU; open_clip's plain ViT-B-32 uses nn.GELU and only
    warns when the 'openai' weights are loaded into it. ``auto`` means ViT-B-32:openai."""
    import warnings

    import open_clip
    from open_clip.transformer import QuickGELU

    downloads = []

    def download_pretrained(cfg, *args, **kwargs):
        downloads.append(cfg)
        return str(vit_b32_weights)

    monkeypatch.setattr(open_clip.factory, "download_pretrained", download_pretrained)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoder = load_clip("auto")
    assert downloads and "openai" in downloads[0]["url"]  # the OpenAI weights were asked for
    assert encoder.name == "ViT-B-32:openai" and encoder.size == 224
    assert isinstance(encoder.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert activations(encoder.visual) == {QuickGELU} and encoder.quick_gelu
    assert not [w for w in caught if "QuickGELU mismatch" in str(w.message)]


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


def test_lpips_term_gets_inputs_in_minus_one_to_one(clip, lpips_random):
    """LPIPS expects [-1, 1] images (the lpips package's convention): the term must equal the
    network called here on 2 s - 1, which is clearly not its value on [0, 1] inputs."""
    torch.manual_seed(1)
    image, sketch = torch.rand(1, 3, 64, 64), (torch.rand(1, 1, 64, 64) > 0.3).float()
    pred = (torch.rand(1, 1, 64, 64) > 0.5).float() * 0.8 + 0.1
    loss = SketchLoss(LossConfig(), clip, lpips_random, image, sketch)
    _, terms = loss(pred, torch.rand(1, 1, 64, 64), torch.rand(1, 3, 64, 64))
    rgb = lambda s: s.expand(-1, 3, -1, -1)  # noqa: E731
    with torch.no_grad():
        expected = lpips_random(rgb(pred) * 2 - 1, rgb(sketch) * 2 - 1).item()
        in_0_1 = lpips_random(rgb(pred), rgb(sketch)).item()
        twice = lpips_random(rgb(pred) * 2 - 1, rgb(sketch) * 2 - 1, normalize=True).item()
    assert abs(expected - in_0_1) > 0.05 * expected and abs(expected - twice) > 0.05 * expected
    assert terms["lpips"].item() == pytest.approx(expected, rel=1e-5)


class LookupClip(nn.Module):
    """A stand-in for the CLIP encoder: each input (a constant image) maps to the embedding listed
    for its mean value, so the embeddings behind every term are known exactly."""

    def __init__(self, table: dict[float, tuple[float, ...]]):
        super().__init__()
        self.table = {round(key * 100): torch.tensor(value) for key, value in table.items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        keys = (images.float().mean(dim=(1, 2, 3)) * 100).round().long().tolist()
        return torch.stack([self.table[key] for key in keys])


class ConstantLpips(nn.Module):
    """A stand-in for LPIPS: 0.25 for every pair, and it keeps the inputs it was given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        self.inputs.append((in0, in1))
        return torch.full((in0.shape[0], 1, 1, 1), 0.25)


# Unit embeddings (thirds and fifths keep every cosine a simple fraction):
#   a = E(I_src) = (1, 0, 0)          b = E(S_src) = (0, 1, 0)         E(S^_src) = (0, 3/5, 4/5)
#   pair 1: c1 = E(I_new) = (2, 1, 2)/3    d1 = E(S^_new) = (2, 2, 1)/3
#   pair 2: c2 = E(I_new) = (2, -2, 1)/3   d2 = E(S^_new) = (1, 2, 2)/3
# across = 1 - cos(d - c, b - a):
#   pair 1: d1 - c1 = (0, 1, -1)/3, b - a = (-1, 1, 0): cos = (1/3) / (sqrt2/3 * sqrt2) = 1/2     -> 1/2
#   pair 2: d2 - c2 = (-1, 4, 1)/3:                    cos = (5/3) / (sqrt18/3 * sqrt2) = 5/6    -> 1/6
# within = 1 - cos(d - b, c - a):
#   pair 1: d1 - b = (2, -1, 1)/3, c1 - a = (-1, 1, 2)/3: cos = (-1/9) / (6/9) = -1/6            -> 7/6
#   pair 2: d2 - b = (1, -1, 2)/3, c2 - a = (-1, -2, 1)/3: cos = (3/9) / (6/9) = 1/2              -> 1/2
# clip = 1 - cos(E(S^_src), b) = 1 - 3/5 = 2/5
ACROSS, WITHIN, CLIP_TERM = (1 / 2 + 1 / 6) / 2, (7 / 6 + 1 / 2) / 2, 2 / 5  # 1/3, 5/6 over the batch
EMBEDDINGS = {
    0.10: (1, 0, 0),  # I_src
    0.50: (0, 1, 0),  # S_src
    0.75: (0, 3 / 5, 4 / 5),  # S^_src
    0.20: (2 / 3, 1 / 3, 2 / 3),  # I_new, pair 1
    0.30: (2 / 3, -2 / 3, 1 / 3),  # I_new, pair 2
    0.60: (2 / 3, 2 / 3, 1 / 3),  # S^_new, pair 1
    0.70: (1 / 3, 2 / 3, 2 / 3),  # S^_new, pair 2
}


def hand_made_example(cfg: LossConfig):
    """The loss on constant images whose embeddings are listed above. The example sketch is half
    lines (0), half paper (1), mean 0.5; the prediction is 0.75 everywhere, so L1 = (0.75 + 0.25) / 2."""
    sketch = torch.ones(1, 1, 8, 8)
    sketch[..., :4, :] = 0
    lpips_net = ConstantLpips()
    loss = SketchLoss(cfg, LookupClip(EMBEDDINGS), lpips_net, torch.full((1, 3, 8, 8), 0.1), sketch)
    pred_example = torch.full((1, 1, 8, 8), 0.75)
    pred_new = torch.cat([torch.full((1, 1, 8, 8), 0.6), torch.full((1, 1, 8, 8), 0.7)])
    new_images = torch.cat([torch.full((1, 3, 8, 8), 0.2), torch.full((1, 3, 8, 8), 0.3)])
    return loss(pred_example, pred_new, new_images), lpips_net, sketch


def test_directional_and_clip_terms_by_hand():
    (_, terms), lpips_net, sketch = hand_made_example(LossConfig())
    assert terms["across"].item() == pytest.approx(ACROSS, abs=1e-6)
    assert terms["within"].item() == pytest.approx(WITHIN, abs=1e-6)
    assert terms["clip"].item() == pytest.approx(CLIP_TERM, abs=1e-6)
    assert terms["l1"].item() == pytest.approx(0.5, abs=1e-6)
    assert terms["lpips"].item() == pytest.approx(0.25)
    # LPIPS saw three-channel images in [-1, 1]: 0.75 -> 0.5, paper (1) -> 1, lines (0) -> -1.
    (pred_rgb, sketch_rgb), = lpips_net.inputs
    assert torch.equal(pred_rgb, torch.full((1, 3, 8, 8), 0.5))
    expected_sketch = torch.ones(1, 3, 8, 8)
    expected_sketch[..., :4, :] = -1
    assert torch.equal(sketch_rgb, expected_sketch)


@pytest.mark.parametrize(
    "weights, expected",
    [
        # method.md §4: 30 L1 + 15 LPIPS + 30 CLIP + 1 across + 1 within
        (dict(), 30 * 0.5 + 15 * 0.25 + 30 * CLIP_TERM + 1 * ACROSS + 1 * WITHIN),
        # distinct weights: a weight applied to the wrong term changes the total
        (dict(l1=1, lpips=2, clip=3, across=4, within=5), 1 * 0.5 + 2 * 0.25 + 3 * CLIP_TERM + 4 * ACROSS + 5 * WITHIN),
        (dict(lpips=0, clip=0, across=0, within=0), 30 * 0.5),
    ],
    ids=["method-weights", "distinct-weights", "l1-only"],
)
def test_total_from_hand_computed_terms(weights, expected):
    (total, terms), _, _ = hand_made_example(LossConfig(**weights))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert set(terms) == {"l1"} | {name for name in ("lpips", "clip", "across", "within") if weights.get(name, 1)}
