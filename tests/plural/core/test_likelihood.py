import math

import numpy as np

import pytest
import torch

from plural.core.likelihood import bradley_terry_nll, independent_share, preference_probability


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


def _graph_rank(a, b) -> int:
    """Rank of the comparison graph's incidence matrix: the reference for independent_share."""
    items = sorted(set(a) | set(b))
    pos = {item: i for i, item in enumerate(items)}
    incidence = np.zeros((len(a), len(items)))
    for row, (x, y) in enumerate(zip(a, b)):
        incidence[row, pos[x]], incidence[row, pos[y]] = 1.0, -1.0
    return int(np.linalg.matrix_rank(incidence))


def test_independent_share_is_the_comparison_graphs_rank_over_its_size():
    rng = np.random.default_rng(0)
    for n_items, n in [(4, 3), (6, 10), (15, 50), (40, 30), (3, 12)]:
        a = rng.integers(0, n_items, n)
        b = (a + rng.integers(1, n_items, n)) % n_items  # never an item against itself
        expected = min(1.0, _graph_rank(a.tolist(), b.tolist()) / n)
        assert independent_share(a, b) == pytest.approx(expected)
        assert independent_share(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected)


def test_independent_share_special_cases():
    assert independent_share([0, 1, 2], [1, 2, 3]) == 1.0           # a chain: a forest
    assert independent_share([0] * 5, [1] * 5) == pytest.approx(0.2)  # one pair repeated
    # all pairs between 3 agreed and 3 disagreed statements: 9 pairs, 6 items, rank 5
    agreed, disagreed = [0, 1, 2], [3, 4, 5]
    a, b = zip(*[(x, y) for x in agreed for y in disagreed])
    assert independent_share(a, b) == pytest.approx(5 / 9)
    assert independent_share([-1, -1], [-1, -1]) == 1.0             # items without an index: distinct
    assert independent_share([], []) == 1.0
    with pytest.raises(ValueError, match="same length"):
        independent_share([0, 1], [2])


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_one_likelihood_for_tensors_and_arrays_with_its_derivatives(eps):
    from plural.core.likelihood import label_log_likelihood, score_and_information

    margin = torch.linspace(-6, 6, 25, dtype=torch.float64, requires_grad=True)
    for y in (0.0, 0.5, 1.0):
        label = torch.full_like(margin, y)
        value = label_log_likelihood(margin, label, eps)
        np.testing.assert_allclose(label_log_likelihood(margin.detach().numpy(), label.numpy(), eps),
                                   value.detach().numpy(), rtol=1e-12)
        if eps:  # training's loss is the same likelihood
            torch.testing.assert_close(bradley_terry_nll(margin, label, noise_rate=eps, reduction="none"), -value)
        (grad,) = torch.autograd.grad(value.sum(), margin)
        score, info = score_and_information(torch.sigmoid(margin.detach()), label, eps)
        torch.testing.assert_close(score, grad)
    # Fisher information: the expected squared score over the two decisive labels
    s = torch.sigmoid(margin.detach())
    p = eps + (1 - 2 * eps) * s
    s1, info = score_and_information(s, torch.ones_like(s), eps)
    s0, _ = score_and_information(s, torch.zeros_like(s), eps)
    torch.testing.assert_close(info, p * s1 ** 2 + (1 - p) * s0 ** 2)
