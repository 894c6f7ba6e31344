import pytest
import torch

from diffsketch.training.prior import PriorError, TextPrior, fit_prior, load_captions, run_prior
from tests.conftest import REPO


def _synthetic(n=200, length=7, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, length * dim)
    return (torch.randn(n, length * dim, generator=g) * scales + 5.0).reshape(n, length, dim)


def test_fit_and_sample_match_the_data_statistics(tmp_path):
    data = _synthetic(n=2000)
    prior = fit_prior(data, components=27)
    assert prior.shape == (7, 4) and prior.n_components == 27
    draws = prior.sample(4000, torch.Generator().manual_seed(1)).reshape(4000, -1)
    flat = data.reshape(2000, -1)
    assert torch.allclose(draws.mean(0), flat.mean(0), atol=0.15)
    # the per-dimension spread follows the data's (largest ~3, smallest components dropped)
    assert torch.allclose(draws.std(0)[:10], flat.std(0)[:10], rtol=0.1)
    # reproducible from the generator seed
    a = prior.sample(2, torch.Generator().manual_seed(5))
    assert torch.equal(a, prior.sample(2, torch.Generator().manual_seed(5)))

    prior.save(tmp_path / "p.safetensors")
    back = TextPrior.load(tmp_path / "p.safetensors")
    assert back.shape == prior.shape and back.meta["captions"] == 2000
    assert torch.equal(back.sample(2, torch.Generator().manual_seed(5)), a)


def test_too_many_components_and_bad_files(tmp_path):
    with pytest.raises(PriorError, match="more captions than components"):
        fit_prior(_synthetic(n=10), components=10)
    with pytest.raises(PriorError, match="not found"):
        TextPrior.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PriorError, match="unreadable"):
        TextPrior.load(tmp_path / "bad.safetensors")


def test_shipped_caption_corpus():
    captions = load_captions(REPO / "data" / "captions")
    assert len(captions) >= 600
    assert len({c.lower() for c in captions}) == len(captions)
    assert len({c.split()[0] for c in captions}) > 20  # varied openings, not one template


def test_run_prior_on_tiny_model(tiny, tmp_path):
    from diffsketch.core.params import parse_params

    corpus = tmp_path / "captions"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(f"a photo of {n} red apples on a table" for n in range(12)))
    params = parse_params({"model": {"id": "tiny", "device": "cpu"}, "prior": {"captions": str(corpus), "components": 8}})
    prior = run_prior(params, tmp_path / "prior.safetensors", progress=False, model=tiny)
    assert prior.shape == (77, tiny.text_encoder.config.hidden_size)
    assert prior.meta["model"] == "tiny" and prior.meta["captions"] == 12
    assert TextPrior.load(tmp_path / "prior.safetensors").n_components == 8
    with pytest.raises(PriorError, match="components"):
        run_prior(params.model_copy(update={"prior": params.prior.model_copy(update={"components": 12})}), tmp_path / "x", model=tiny)
