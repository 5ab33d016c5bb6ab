import torch

from plural.core.label_noise import em_round, mixture_logit, noisy_label_log_likelihood


def test_label_likelihood_and_correctness_match_the_definitions():
    margin = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-4.0, 0.0]])
    label = torch.tensor([1.0, 0.0, 0.5])
    eps = 0.2
    log_lik, correct = noisy_label_log_likelihood(margin, label, eps)
    s = torch.sigmoid(margin)
    p_a = (1 - eps) * s + eps * (1 - s)
    y = label.unsqueeze(-1)
    expected = torch.where(y == 1, p_a, 1 - p_a)
    expected[2] = (p_a[2] * (1 - p_a[2])).sqrt()  # a tie scores both outcomes by half
    assert torch.allclose(log_lik.exp(), expected, atol=1e-6)
    clean = torch.where(y == 1, s, 1 - s)
    assert torch.allclose(correct[:2], ((1 - eps) * clean / expected)[:2], atol=1e-6)
    assert torch.all(correct[2] == 1)  # ties are never flipped


def test_mixture_logit_is_the_logit_of_the_mixture_probability():
    margin = torch.tensor([[3.0, -2.0, 0.1], [-8.0, 40.0, 1.0]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    for eps in (0.0, 0.15):
        prob = eps + (1 - 2 * eps) * (weights * torch.sigmoid(margin)).sum(-1)
        assert torch.allclose(torch.sigmoid(mixture_logit(margin, weights, eps)), prob, atol=1e-6)


def test_em_round_recovers_a_planted_flip_rate_and_assignment():
    gen = torch.Generator().manual_seed(0)
    n_users, per_user = 40, 50
    user = torch.arange(n_users).repeat_interleave(per_user)
    head = (torch.arange(n_users) % 2)[user]
    true_margin = 20 * torch.randn(len(user), generator=gen)
    margin = torch.stack([true_margin, -true_margin], 1)  # head 1 is head 0 reversed
    clean = (torch.where(head == 0, true_margin, -true_margin) > 0).float()
    flip = torch.rand(len(user), generator=gen) < 0.25
    label = torch.where(flip, 1 - clean, clean)
    pi, eps = torch.full((2,), 0.5), torch.tensor(0.1)
    for _ in range(30):
        gamma, eps, pi = em_round(margin, label, user, torch.ones(len(user)), pi, eps, n_users)
    assert abs(float(eps) - float(flip.float().mean())) < 0.02
    assert torch.equal(gamma.argmax(1), torch.arange(n_users) % 2)
