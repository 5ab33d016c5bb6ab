import numpy as np
import pytest
import torch

from plural.core.batch import comparison_batch
from plural.core.model import available_models, make_model
from user_models.bradley_terry import BradleyTerry


@pytest.fixture(scope="module")
def model(planted, fast_fit):
    data, _ = planted
    return make_model("bradley_terry", hidden_dim=32).fit(data, random_state=0, **fast_fit), data


def test_registered_through_entry_points():
    assert "bradley_terry" in available_models()
    assert isinstance(make_model("bradley_terry"), BradleyTerry)


def test_reward_recovers_the_planted_ordering(model, planted):
    m, data = model
    _, w = planted
    scores = m.reward(torch.from_numpy(data.item_features)).detach().numpy()
    truth = data.item_features @ w
    assert np.corrcoef(scores, truth)[0, 1] > 0.9


def test_reward_batches_over_users(model):
    m, data = model
    x = torch.from_numpy(data.item_features[:7])
    per_user = m.reward(x, torch.zeros(3, 0))
    assert per_user.shape == (3, 7)
    assert torch.allclose(per_user[1], m.reward(x))


def test_adapt_returns_the_population_state(model):
    m, data = model
    state = m.adapt(comparison_batch(data, np.arange(5), m))
    assert state.vector.numel() == 0 and state.n_comparisons == 5
    assert m.adapt(None).n_comparisons == 0
    assert m.user_states().shape == (data.n_users, 0)


def test_rejects_features_of_the_wrong_dimension(model):
    m, _ = model
    with pytest.raises(ValueError, match=r"expects item features of shape \(n, 16\)"):
        m.reward(torch.zeros(4, 8))
