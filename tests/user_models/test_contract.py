"""One suite run against every model in the zoo: a new model gets these tests by being added to
MODELS. Tiny planted data with two opposed user types, so personalization has a right answer."""

import numpy as np
import pytest
import torch

from plural.core.batch import comparison_batch
from plural.training.checkpoint import load_model, save_model
from plural.data.splits import make_episodes, split_comparisons, split_users
from plural.data.synthetic import make_mixture
from plural.evaluation.metrics import evaluate
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.core.model import MAX_SUPPORT, NotFittedError, UserState, make_model

POPULATION_ONLY = ["bradley_terry", "item_winrate"]
PER_USER = ["anchored_logistic", "per_user_logistic"]
LATENT = ["low_rank", "ideal_point", "em_mixture", "vpl"]
MODELS = POPULATION_ONLY + PER_USER + LATENT
OPTIONS = {name: dict(hidden_dim=32, n_components=2, item_dim=8) for name in LATENT}
OPTIONS["anchored_logistic"] = dict(prior_precision=1.0)
OPTIONS["vpl"].update(learning_rate=1e-2, kl_warmup_epochs=2, beta=0.5)


@pytest.fixture(scope="module")
def planted():
    """Two types with opposed type-specific rewards; strong margins, 16-d features."""
    syn = make_mixture(n_types=2, n_users=80, n_items=150, dim=16, comparisons_per_user=80,
                       type_weights=[0.5, 0.5], scale=12.0, shared_weight=0.2, random_state=0)
    data = syn.data
    seen, unseen = split_users(data, 0.25, random_state=0)
    split = split_comparisons(data, seen, mode="comparisons", random_state=0)
    episodes = make_episodes(data, unseen, mode="items", n_draws=1, min_query=10, random_state=0)
    return syn, data, split, episodes


@pytest.fixture(scope="module")
def fitted(planted):
    _, data, split, _ = planted
    models = {}
    for name in MODELS:
        models[name] = make_model(name, **OPTIONS.get(name, {})).fit(
            data, train_rows=split.train, val_rows=split.val, max_epochs=25, batch_size=128,
            show_progress=False, random_state=0)
    return models


@pytest.mark.parametrize("name", MODELS)
def test_trains_above_chance(fitted, planted, name):
    _, data, split, _ = planted
    acc = evaluate(fitted[name], data, split.test)["accuracy"]
    assert acc > 0.55, f"{name}: seen-user test accuracy {acc:.3f}"


@pytest.mark.parametrize("name", LATENT)
def test_latent_models_recover_the_types_for_seen_users(fitted, planted, name):
    syn, data, split, _ = planted
    acc = evaluate(fitted[name], data, split.test)["accuracy"]
    population = evaluate(fitted["bradley_terry"], data, split.test)["accuracy"]
    assert acc > population + 0.05, f"{name}: {acc:.3f} vs population {population:.3f}"


@pytest.mark.parametrize("name", LATENT + ["anchored_logistic"])
def test_adapting_a_new_user_beats_the_population(fitted, planted, name):
    _, data, _, episodes = planted
    result = few_shot_curve(fitted[name], data, episodes, ks=(0, 20))
    k0, k20 = curve_value(result, 0), curve_value(result, 20)
    assert k20 > k0 + 0.05, f"{name}: k=0 {k0:.3f}, k=20 {k20:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_empty_support_gives_the_population_state(fitted, planted, name):
    model = fitted[name]
    _, data, _, _ = planted
    empty = comparison_batch(data, np.array([], dtype=np.int64), model)
    for state in (model.adapt(None), model.adapt(empty)):
        assert isinstance(state, UserState) and state.n_comparisons == 0
        x = torch.from_numpy(data.item_features[:20])
        pop = model.reward(x, model.population_state())
        assert torch.allclose(model.reward(x, state), pop, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_reward_is_batched_over_users(fitted, planted, name):
    model = fitted[name]
    _, data, _, _ = planted
    x = torch.from_numpy(data.item_features[:9])
    states = model.user_states()
    assert states.shape[0] == len(model.user_ids_)
    scores = model.reward(x, states[:4])
    assert scores.shape == (4, 9)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(fitted, planted, name, tmp_path):
    model = fitted[name]
    _, data, split, _ = planted
    save_model(model, tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model)
    x = torch.from_numpy(data.item_features[:30])
    idx = loaded.item_index(data.item_ids[:30])
    with torch.no_grad():
        assert torch.allclose(loaded.reward(x, None, idx), model.reward(x, None, idx), atol=1e-6)
        assert torch.allclose(loaded.user_states(), model.user_states(), atol=1e-6)
    assert evaluate(loaded, data, split.test)["accuracy"] == pytest.approx(
        evaluate(model, data, split.test)["accuracy"])


@pytest.mark.parametrize("name", MODELS)
def test_rejects_bad_input(fitted, planted, name):
    model = fitted[name]
    _, data, _, _ = planted
    bad = comparison_batch(data, np.arange(3), model)
    bad["features_a"] = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="expects item features"):
        model.adapt(bad)
    with pytest.raises(ValueError, match="expects item features"):
        model.reward(torch.zeros(2, 5))
    with pytest.raises(NotFittedError):
        make_model(name, **OPTIONS.get(name, {})).reward(torch.zeros(2, 16))


@pytest.mark.parametrize("name", MODELS)
def test_adapt_checks_its_support(fitted, planted, name, caplog):
    model = fitted[name]
    _, data, _, _ = planted
    cases = [("label", 1, 0.7, r"support label 0.7 at row 1 is not one of 0, 0.5, 1"),
             ("features_b", 2, float("nan"), r"support features_b at row 2 holds NaN"),
             ("weight", 0, -2.0, r"support weight -2 at row 0 must be finite and >= 0"),
             ("item_b", 2, len(model.item_ids_) + 3, r"support item_b \d+ at row 2 is past the model's item vocabulary"),
             ("context", 0, len(model.context_ids_), r"support context \d+ at row 0 is past the model's context")]
    for key, row, value, message in cases:
        bad = comparison_batch(data, np.arange(3), model)
        bad[key][row] = value
        with pytest.raises(ValueError, match=message):
            model.adapt(bad)
    big = comparison_batch(data, np.arange(MAX_SUPPORT + 1000), model)
    with caplog.at_level("WARNING", logger="plural.core.model"):
        state = model.adapt(big)
    assert state.n_comparisons == MAX_SUPPORT and "MAX_SUPPORT" in caplog.text
    assert torch.isfinite(state.vector).all()


@pytest.mark.parametrize("name", ["low_rank", "ideal_point", "anchored_logistic"])
def test_adapt_reports_uncertainty_that_shrinks_with_evidence(fitted, planted, name):
    model = fitted[name]
    _, data, _, episodes = planted
    ep = max(episodes, key=lambda e: len(e.support_pool))
    few = model.adapt(comparison_batch(data, ep.support(2), model))
    many = model.adapt(comparison_batch(data, ep.support(min(30, len(ep.support_pool))), model))
    assert few.covariance is not None
    assert torch.trace(many.covariance) < torch.trace(few.covariance)


def test_adapt_is_deterministic(fitted, planted):
    _, data, _, episodes = planted
    for name in LATENT:
        batch = comparison_batch(data, episodes[0].support(5), fitted[name])
        a, b = fitted[name].adapt(batch), fitted[name].adapt(batch)
        assert torch.equal(a.vector, b.vector)


def test_adaptation_prior_follows_the_user_vectors(fitted):
    model = fitted["low_rank"]
    before = model.prior()[1].clone()
    assert model.prior()[1] is model.prior()[1]  # cached between adapt calls
    with torch.no_grad():
        saved = model.user_embedding.weight.clone()
        model.user_embedding.weight.mul_(2.0)
    try:
        assert torch.allclose(model.prior()[1] - model.config.prior_floor * torch.eye(model.user_dim, dtype=torch.float64),
                              4 * (before - model.config.prior_floor * torch.eye(model.user_dim, dtype=torch.float64)))
    finally:
        with torch.no_grad():
            model.user_embedding.weight.copy_(saved)
    assert torch.allclose(model.prior()[1], before)
