import copy

import pytest
import torch

from plural.core.batch import comparison_batch
from plural.core.model import make_model


@pytest.mark.parametrize("name", ["low_rank", "ideal_point"])
def test_recentring_users_moves_their_mean_into_the_population_and_keeps_every_margin(name, planted, fast_fit):
    planted = planted[0]
    model = make_model(name, hidden_dim=16, item_dim=8, n_components=3).fit(planted, **fast_fit)
    users = model.user_states()
    assert users.mean(0).abs().max() < 1e-5  # fit ended with the hook
    shifted = copy.deepcopy(model)
    with torch.no_grad():  # move every training user by the same offset: a different model
        shifted.user_embedding.weight[: len(users)] += torch.tensor([0.7, -0.4, 0.2])
    batch = comparison_batch(planted, list(range(200)), shifted)
    with torch.no_grad():
        before = shifted.pair_margin(batch)
        shifted.on_fit_complete()
        after = shifted.pair_margin(batch)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert shifted.user_states().mean(0).abs().max() < 1e-5
    with torch.no_grad():
        assert not torch.allclose(after, model.pair_margin(batch), atol=1e-3)  # the shift was real
