import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from sklearn.metrics import adjusted_rand_score

from plural.core.batch import comparison_batch
from plural.training.checkpoint import load_model, save_model
from plural.data.container import PreferenceData
from plural.core.model import UserState, available_models, make_model
from user_models.em_mixture import EMMixture, EMMixtureConfig

FLIP_RATE = 0.2
# content-only heads of modest capacity: the planted rewards are linear in the features, and a model
# that can memorise its training labels (item identities, a wide MLP) explains flips away
SMALL = dict(n_components=3, use_identity=False, hidden_dim=32, item_dim=16, learning_rate=3e-3)


def make_noisy_types(n_types=3, seen_per_type=20, unseen_per_type=8, n_items=300, dim=16,
                     per_user=60, flip_rate=FLIP_RATE, seed=0):
    """Users of ``n_types`` types, each with its own linear reward on ``dim``-d item features; labels
    are the sign of the reward margin (deterministic), then a ``flip_rate`` share is flipped."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_items, dim)).astype(np.float32)
    directions = rng.normal(size=(n_types, dim))
    n_users = n_types * (seen_per_type + unseen_per_type)
    user_type = np.arange(n_users) % n_types
    user = np.repeat(np.arange(n_users), per_user)
    item_a = rng.integers(0, n_items, len(user))
    item_b = (item_a + rng.integers(1, n_items, len(user))) % n_items
    margin = ((features[item_a] - features[item_b]) * directions[user_type[user]]).sum(1)
    clean = (margin > 0).astype(np.float32)
    flipped = rng.random(len(user)) < flip_rate
    data = PreferenceData(user_ids=[f"u{i}" for i in range(n_users)],
                          item_ids=[f"i{j}" for j in range(n_items)], user=user, item_a=item_a,
                          item_b=item_b, label=np.where(flipped, 1 - clean, clean), item_features=features,
                          name="noisy_types")
    seen = np.arange(n_users) < n_types * seen_per_type
    return data, user_type, seen, flipped


@pytest.fixture(scope="module")
def noisy():
    return make_noisy_types()


@pytest.fixture(scope="module")
def fitted(noisy, fast_fit):
    data, _, seen, _ = noisy
    train_rows = np.flatnonzero(seen[data.user])
    model = make_model("em_mixture", **SMALL).fit(data, train_rows=train_rows, random_state=0, **fast_fit)
    return model


def accuracy(margin: torch.Tensor, label: torch.Tensor) -> float:
    return float(((margin > 0).float() == label).float().mean())


# ---------------------------------------------------------------------- the math
def test_config_is_validated():
    with pytest.raises(ValueError, match=r"init_noise_rate must be in \[0, 0.5\), got 0.5"):
        EMMixtureConfig(init_noise_rate=0.5)
    with pytest.raises(ValueError, match="max_noise_rate must be in"):
        EMMixtureConfig(max_noise_rate=0.6)
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        EMMixtureConfig(n_components=0)


# ---------------------------------------------------------------------- the fitted model
def test_registered_through_entry_points():
    assert "em_mixture" in available_models()
    assert isinstance(make_model("em_mixture"), EMMixture)


def test_estimates_the_planted_noise_rate(fitted, noisy):
    data, _, seen, flipped = noisy
    realised = flipped[seen[data.user]].mean()
    assert abs(realised - FLIP_RATE) < 0.02
    assert abs(fitted.noise_rate_ - FLIP_RATE) < 0.05, fitted.noise_rate_


def test_responsibilities_recover_the_planted_types(fitted, noisy):
    data, user_type, seen, _ = noisy
    gamma = fitted.user_states()
    assert gamma.shape == (seen.sum(), 3)
    assert torch.allclose(gamma.sum(1), torch.ones(len(gamma)), atol=1e-5)
    rows = fitted.user_index(data.user_ids[seen]).numpy()
    assert adjusted_rand_score(user_type[seen], gamma[rows].argmax(1).numpy()) > 0.8


def test_adapting_an_unseen_user_beats_the_population_mixture(fitted, noisy):
    data, _, seen, _ = noisy
    population, adapted = [], []
    for u in np.flatnonzero(~seen):
        rows = np.flatnonzero(data.user == u)
        state = fitted.adapt(comparison_batch(data, rows[:20], fitted))
        assert state.vector.shape == (3,) and state.n_comparisons == 20
        query = comparison_batch(data, rows[20:], fitted)
        with torch.no_grad():
            population.append(accuracy(fitted.state_margin(query, fitted.population_state()), query["label"]))
            adapted.append(accuracy(fitted.state_margin(query, state), query["label"]))
    assert np.mean(adapted) > np.mean(population) + 0.05, (np.mean(adapted), np.mean(population))


def test_a_user_without_comparisons_gets_the_prior(fitted, noisy):
    data, _, seen, _ = noisy
    pi = fitted.mixture_weights_
    assert torch.allclose(pi.sum(), torch.tensor(1.0))
    assert torch.equal(fitted.adapt(None).vector, pi)
    empty = comparison_batch(data, np.array([], dtype=np.int64), fitted)
    assert torch.equal(fitted.adapt(empty).vector, pi) and fitted.adapt(empty).n_comparisons == 0
    # an unseen user's prediction in a batch is the pi-mixture
    rows = np.flatnonzero(data.user == np.flatnonzero(~seen)[0])[:10]
    batch = comparison_batch(data, rows, fitted)
    assert torch.all(batch["user"] == -1)
    with torch.no_grad():
        assert torch.allclose(fitted.pair_margin(batch), fitted.state_margin(batch, fitted.population_state()))


def test_reward_is_posterior_weighted_and_batches_over_users(fitted, noisy):
    data, _, _, _ = noisy
    x = torch.from_numpy(data.item_features[:7])
    gamma = fitted.user_states()[:5]
    with torch.no_grad():
        per_user = fitted.reward(x, gamma)
        heads = fitted.head_rewards(x)
        assert per_user.shape == (5, 7)
        assert torch.allclose(per_user, gamma @ heads.T, atol=1e-5)
        assert torch.allclose(fitted.reward(x, UserState(vector=gamma[2])), per_user[2], atol=1e-5)
        assert torch.allclose(fitted.reward(x), heads @ fitted.mixture_weights_, atol=1e-5)


def test_checkpoint_round_trip(fitted, noisy, tmp_path):
    data, _, _, _ = noisy
    loaded = load_model(save_model(fitted, tmp_path / "em"), "em_mixture")
    assert torch.equal(loaded.user_states(), fitted.user_states())
    assert loaded.noise_rate_ == fitted.noise_rate_
    x = torch.from_numpy(data.item_features)
    with torch.no_grad():
        assert torch.equal(loaded.reward(x, loaded.user_states()), fitted.reward(x, fitted.user_states()))
        support = comparison_batch(data, np.arange(20), fitted)
        assert torch.equal(loaded.adapt(support).vector, fitted.adapt(support).vector)


def test_rejects_features_of_the_wrong_dimension(fitted, noisy):
    data, _, _, _ = noisy
    support = comparison_batch(data, np.arange(5), fitted)
    support["features_a"] = support["features_a"][:, :8]
    with pytest.raises(ValueError, match=r"expects item features of shape \(n, 16\)"):
        fitted.adapt(support)
    with pytest.raises(ValueError, match=r"expects item features of shape \(n, 16\)"):
        fitted.reward(torch.zeros(4, 8))


def test_deterministic_under_a_seed_and_logs_the_noise_rate(noisy):
    data, _, seen, _ = noisy
    train_rows = np.flatnonzero(seen[data.user])

    class Record(pl.Callback):
        def __init__(self):
            self.noise = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.noise.append(float(trainer.callback_metrics["noise_rate"]))

    runs = []
    for _ in range(2):
        record = Record()
        model = make_model("em_mixture", **SMALL).fit(data, train_rows=train_rows, random_state=3,
                                                      max_epochs=4, show_progress=False, callbacks=[record])
        runs.append((model.user_states(), model.noise_rate_, record.noise))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert len(runs[0][2]) == 4 and runs[0][2] == runs[1][2]
