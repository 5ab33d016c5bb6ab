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


def test_a_users_own_trainer_recentres_the_users_too(planted):
    """The recentring is the model's ``on_fit_end`` hook, not a step ``plural.fit`` adds."""
    import numpy as np
    import pytorch_lightning as pl

    from plural.training.fit import PreferenceDataModule

    data = planted[0]
    rows = np.arange(len(data))
    model = make_model("low_rank", hidden_dim=16, item_dim=8, n_components=3).build_for(data, rows)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=PreferenceDataModule(data, rows, None, model, 128))
    assert model.user_states().abs().max() > 1e-3 and model.user_states().mean(0).abs().max() < 1e-5


def test_support_margins_and_adaptation_prior_are_public(planted, fast_fit):
    data = planted[0]
    model = make_model("ideal_point", hidden_dim=16, item_dim=8, n_components=3).fit(
        data, **dict(fast_fit, max_epochs=2))
    batch = comparison_batch(data, list(range(30)), model)
    u = torch.randn(3, dtype=torch.float64)
    margins, jac = model.support_margins(batch)(u)
    assert margins.shape == (30,) and jac.shape == (30, 3) and margins.dtype == torch.float64
    assert not hasattr(model, "_support_margins")  # one public name
    mean, cov, precision = model.adaptation_prior()
    assert model.prior()[1] is cov and torch.equal(mean, model.prior()[0])
    torch.testing.assert_close(precision, torch.linalg.inv(cov))
    assert model.adapts_by_map

    class OwnAdapt(type(model)):
        def adapt(self, support=None, prior=None):
            return self.population_state()

    assert not OwnAdapt(model.config).adapts_by_map  # replacing adapt drops the capability
