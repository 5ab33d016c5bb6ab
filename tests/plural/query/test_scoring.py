import numpy as np
import pytest
import torch

from plural.core.model import make_model
from plural.query.scoring import score_items


@pytest.fixture(scope="module")
def model(planted, fast_fit):
    data, _ = planted
    return make_model("low_rank", hidden_dim=16, n_components=2, item_dim=8).fit(data, **fast_fit), data


def test_scores_for_population_seen_user_and_state(model):
    m, data = model
    pop = score_items(m, data)
    assert pop.shape == (data.n_items,)
    uid = m.user_ids_[0]
    seen = score_items(m, data, uid)
    row = m.user_states()[0]
    x = torch.from_numpy(data.item_features)
    expected = m.reward(x, row.unsqueeze(0), m.item_index(data.item_ids))[0].detach().numpy()
    np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-5)
    state = m.population_state()
    np.testing.assert_allclose(score_items(m, data, state), pop, rtol=1e-5, atol=1e-5)


def test_feature_matrix_and_errors(model):
    m, data = model
    scores = score_items(m, data.item_features[:5])
    assert scores.shape == (5,)
    with pytest.raises(ValueError, match="unknown user id 'nobody'"):
        score_items(m, data, "nobody")
