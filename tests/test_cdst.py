import pytest
import torch

from diffsketch.training.cdst import cdst_condition, cdst_weight


@pytest.mark.parametrize(
    "r, expected", [(0.0, 1.0), (0.1, 0.750), (0.25, 0.634), (0.5, 0.5), (0.75, 0.366), (0.9, 0.250)]
)
def test_weights_match_method_table(r, expected):
    """method.md §5: the weight on the example's condition at r = i / h."""
    assert cdst_weight(round(r * 1000), 1000) == pytest.approx(expected, abs=5e-4)


def test_random_only_from_the_horizon_on():
    assert cdst_weight(999, 1000) > 0
    assert cdst_weight(1000, 1000) == 0.0
    assert cdst_weight(1199, 1000) == 0.0
    assert cdst_weight(0, 0) == 0.0  # horizon 0: random conditions from the start
    weights = [cdst_weight(i, 100) for i in range(101)]
    assert all(a > b for a, b in zip(weights, weights[1:-1]))  # strictly decreasing before the horizon


def test_condition_mixes_linearly():
    example, random = torch.ones(1, 77, 8), torch.zeros(3, 77, 8)
    mixed = cdst_condition(example, random, 250, 1000)
    assert mixed.shape == (3, 77, 8)
    assert torch.allclose(mixed, torch.full_like(mixed, cdst_weight(250, 1000)))
    assert torch.equal(cdst_condition(example, random, 1000, 1000), random)
    with pytest.raises(ValueError):
        cdst_weight(-1, 10)
