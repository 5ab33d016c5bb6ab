import math

import pytest
import torch

from plural.likelihood import bradley_terry_nll, preference_probability


def test_probability_is_sigmoid_without_noise():
    m = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(preference_probability(m), torch.sigmoid(m))


def test_noise_rate_bounds_probability():
    p = preference_probability(torch.tensor([-50.0, 50.0]), noise_rate=0.2)
    assert torch.allclose(p, torch.tensor([0.2, 0.8]), atol=1e-6)


def test_nll_matches_hand_computation():
    m, y = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0])
    expected = (-math.log(1 / (1 + math.exp(-1))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert bradley_terry_nll(m, y).item() == pytest.approx(expected, rel=1e-6)


def test_noisy_nll_equals_plain_at_zero_noise_tensor():
    m, y = torch.randn(20), (torch.rand(20) > 0.5).float()
    assert bradley_terry_nll(m, y, noise_rate=torch.tensor(0.0)).item() == pytest.approx(
        bradley_terry_nll(m, y).item(), rel=1e-4)


def test_weights_and_ties():
    m = torch.tensor([0.0, 2.0])
    y = torch.tensor([0.5, 1.0])
    w = torch.tensor([0.0, 1.0])
    assert bradley_terry_nll(m, y, w).item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(2.0)).item()), rel=1e-6)
    # a tie at margin 0 is the minimum of its soft cross-entropy
    assert bradley_terry_nll(torch.tensor([0.0]), torch.tensor([0.5])).item() < \
        bradley_terry_nll(torch.tensor([1.0]), torch.tensor([0.5])).item()


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_nll(torch.zeros(2), torch.zeros(2), reduction="max")
