"""One suite run against every model that can be made: a new model gets these tests by being
registered (``plural.available_models()``), not by being added to a list here. Tiny planted data with
two opposed user types, so personalization has a right answer; every model is trained once per module.

Besides training and adaptation, each model goes through what query time does with it: exact top-n
(``plural.query.recommend.ItemIndex``), ``personalize`` with a user store, an ``ActiveSession``, a
checkpoint round trip, the query-time capabilities of the contract, the scikit-learn estimator
protocol, and ``plural.fit`` against a user's own ``pl.Trainer``."""

import dataclasses

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from plural.core.batch import comparison_batch
from plural.core.laplace import LinearMargins
from plural.training.checkpoint import load_model, save_model
from plural.data.splits import make_episodes, split_comparisons, split_users
from plural.data.synthetic import make_mixture
from plural.evaluation.metrics import evaluate
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.core.model import (INNER_PRODUCT, MAX_SUPPORT, SQUARED_DISTANCE, NotFittedError, UserState,
                               available_models, make_model, model_class)
from plural.query.active import ActiveSession
from plural.query.personalize import build_user_store, personalize, supports_retrieval
from plural.query.recommend import ItemIndex, retrieval_form
from plural.query.scoring import score_items
from plural.query.store import UserStore
from plural.training.fit import PreferenceDataModule, fit

MODELS = available_models()
POPULATION_ONLY = ["bradley_terry", "item_winrate"]
PER_USER = ["anchored_logistic", "per_user_logistic"]
LATENT = ["low_rank", "ideal_point", "em_mixture", "vpl"]
TINY = dict(hidden_dim=32, n_components=2, item_dim=8)
"""Small layers for any model whose config has these fields (the models listed in OPTIONS keep
the options their assertions were tuned with)."""
OPTIONS = {name: dict(TINY) for name in LATENT}
OPTIONS["anchored_logistic"] = dict(prior_precision=1.0)
OPTIONS["vpl"].update(learning_rate=1e-2, kl_warmup_epochs=2, beta=0.5)
CAPABILITIES = {  # (support_margins, adaptation_prior, adapts_by_map, retrieval kind) of the zoo
    "bradley_terry": (False, False, False, None), "item_winrate": (False, False, False, None),
    "anchored_logistic": (False, False, False, None), "per_user_logistic": (False, False, False, None),
    "low_rank": (True, True, True, INNER_PRODUCT), "ideal_point": (True, True, True, SQUARED_DISTANCE),
    "em_mixture": (False, False, False, None), "vpl": (True, True, False, INNER_PRODUCT),
}


def options(name: str) -> dict:
    if name in OPTIONS:
        return dict(OPTIONS[name])
    fields = {f.name for f in dataclasses.fields(model_class(name).config_class)}
    return {k: v for k, v in TINY.items() if k in fields}


def test_the_suite_covers_the_zoo():
    assert set(POPULATION_ONLY + PER_USER + LATENT) <= set(MODELS)
    assert set(CAPABILITIES) <= set(MODELS)


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
        models[name] = make_model(name, **options(name)).fit(
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
        make_model(name, **options(name)).reward(torch.zeros(2, 16))


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


# ---------------------------------------------------------------------- query time, for every model
def _states(model, data, episodes):
    """The population, a seen user (by id), and a new user adapted on 5 comparisons."""
    adapted = model.adapt(comparison_batch(data, episodes[0].support(5), model))
    return [None, model.user_ids_[0], adapted]


@pytest.mark.parametrize("name", MODELS)
def test_top_n_is_exact(fitted, planted, name):
    model = fitted[name]
    _, data, _, episodes = planted
    index = ItemIndex(model, data)
    assert index.form == retrieval_form(model)  # a declared form holds on the trained model
    assert index.index_kind == ("exact" if index.form is None else "flat")
    ids = np.asarray(data.item_ids)
    for state in _states(model, data, episodes):
        scores = score_items(model, data, state)
        got = index.top_n(state, n=10)
        got_scores = np.array([s for _, s in got])
        np.testing.assert_allclose(got_scores, np.sort(scores)[::-1][:10], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_scores, scores[np.searchsorted(ids, [i for i, _ in got])]
                                   if np.all(ids[:-1] <= ids[1:]) else
                                   [scores[list(ids).index(i)] for i, _ in got], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(index.score(state), scores, rtol=1e-5, atol=1e-5)
        best = [i for i, _ in got[:3]]
        rest = index.top_n(state, n=10, exclude=best)
        assert len(rest) == 10 and not {i for i, _ in rest} & set(best)


@pytest.mark.parametrize("name", MODELS)
def test_personalize_with_a_store(fitted, planted, name):
    model = fitted[name]
    _, data, _, episodes = planted
    has_vectors = model.user_states().shape[1] > 0
    store = build_user_store(model) if has_vectors else UserStore(1, metric="ip")
    empty = personalize(model, store, None)
    torch.testing.assert_close(empty.vector, model.population_state().vector)
    for ep in episodes[:3]:
        support = comparison_batch(data, ep.support(5), model)
        state = personalize(model, store, support)
        assert isinstance(state, UserState) and state.n_comparisons == 5
        assert torch.isfinite(state.vector).all()
        plain = model.adapt(support)
        if supports_retrieval(model):
            assert state.covariance is not None and torch.linalg.eigvalsh(state.covariance).min() > 0
            if isinstance(model.support_margins(support), LinearMargins):
                # all prior mass on the population and margins linear in u: the mixture posterior is
                # adapt's (otherwise personalize linearises the margins at the population)
                only_population = personalize(model, store, support, shrinkage=1.0)
                torch.testing.assert_close(only_population.vector, plain.vector, atol=1e-4, rtol=1e-4)
        else:
            torch.testing.assert_close(state.vector, plain.vector)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("strategy", ["eig", "targeted", "entropy"])
def test_active_session(fitted, planted, name, strategy):
    model = fitted[name]
    _, data, _, episodes = planted
    ep = max(episodes, key=lambda e: len(e.support_pool))
    pool = ep.support_pool[:40]
    candidates = comparison_batch(data, pool, model)
    session = ActiveSession(model, candidates, strategy=strategy)
    for _ in range(3):
        scores = session.scores()
        assert scores.shape == (len(pool),) and np.isfinite(scores[~np.isin(np.arange(len(pool)), session.asked)]).all()
        i = session.ask()
        assert i not in session.asked and scores[i] == scores.max()
        session.answer(float(data.label[pool[i]]))
    assert len(set(session.asked)) == 3 and session.state.n_comparisons == 3
    assert len(session.history) == 4 and np.isneginf(session.scores()[session.asked]).all()
    if strategy == "eig" and model.support_margins(candidates) is not None:
        assert (session.scores()[np.isfinite(session.scores())] >= 0).all()  # an information gain


@pytest.mark.parametrize("name", MODELS)
def test_query_time_capabilities(fitted, planted, name):
    """What ``plural.query`` relies on, checked against the model's own predictions."""
    model = fitted[name]
    _, data, _, episodes = planted
    support = comparison_batch(data, episodes[0].support(8), model)
    state = model.adapt(support)
    assert model.user_dim == model.population_state().vector.numel() == state.vector.numel()
    assert 0 <= model.likelihood_noise_rate < 0.5
    diagnostics = model.diagnostics()
    assert isinstance(diagnostics, dict) and all(
        isinstance(k, str) and isinstance(v, float) and np.isfinite(v) for k, v in diagnostics.items())
    assert list(model.user_index([model.user_ids_[2], "nobody"])) == [2, -1]
    assert list(model.item_index([model.item_ids_[5], "nothing"])) == [5, -1]
    assert list(model.context_index(["nowhere"])) == [-1]

    fn = model.support_margins(support)
    prior = model.adaptation_prior()
    form = model.retrieval_form()
    expected = CAPABILITIES.get(name)
    if expected is not None:
        assert (fn is not None, prior is not None, model.adapts_by_map, None if form is None else form.kind) == expected
    assert supports_retrieval(model) == model.adapts_by_map
    if model.adapts_by_map:
        assert fn is not None and prior is not None
    if fn is not None:
        margins, jacobian = fn(state.vector.double())
        assert margins.dtype == jacobian.dtype == torch.float64
        assert jacobian.shape == (len(support["label"]), model.user_dim)
        with torch.no_grad():
            torch.testing.assert_close(margins.float(), model.state_margin(support, state).float(),
                                       atol=1e-4, rtol=1e-4)
    if prior is not None:
        mean, cov, precision = prior
        assert mean.shape == (model.user_dim,) and cov.shape == precision.shape == (model.user_dim,) * 2
        torch.testing.assert_close(cov @ precision, torch.eye(model.user_dim, dtype=cov.dtype), atol=1e-6, rtol=0)
    if form is not None:
        x = torch.from_numpy(data.item_features[:25])
        idx = model.item_index(data.item_ids[:25])
        vectors, bias = form.items(x, idx)
        for u in (torch.zeros(model.user_dim), state.vector):
            with torch.no_grad():
                torch.testing.assert_close(form.score(vectors, bias, form.query(u)),
                                           model.reward(x, UserState(vector=u), idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_sklearn_clone_is_an_unfitted_model_with_the_same_config(fitted, name):
    sklearn_base = pytest.importorskip("sklearn.base")
    model = fitted[name]
    params = model.get_params()
    assert params == model.get_params(deep=False) == {
        f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config)}
    twin = sklearn_base.clone(model)
    assert type(twin) is type(model) and twin is not model
    assert not twin.is_built and twin.config == model.config and twin.get_params() == params
    with pytest.raises(NotFittedError):
        twin.user_states()
    assert twin.set_params(hidden_dim=7) is twin
    assert twin.config.hidden_dim == 7 and model.config.hidden_dim == params["hidden_dim"]
    assert twin.hparams["config"]["hidden_dim"] == 7
    with pytest.raises(ValueError, match="invalid parameter"):
        twin.set_params(no_such_field=1)
    with pytest.raises(ValueError, match="hidden_dim must be >= 1"):
        twin.set_params(hidden_dim=0)
    assert twin.config.hidden_dim == 7


def _own_trainer(max_epochs: int) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      deterministic=True)


@pytest.mark.parametrize("name", MODELS)
def test_plural_fit_and_a_users_own_trainer_end_in_the_same_state(planted, name):
    """Without validation rows (so without the best-weights restore, which is ``plural.fit``'s own),
    ``plural.fit`` and ``trainer.fit(model, datamodule=...)`` leave the same model behind: the work of
    the end of training (recentring, last E-step, user encodings, counts) is in Lightning's hooks."""
    _, data, split, _ = planted
    rows, no_rows = split.train, np.empty(0, dtype=np.int64)
    ours = fit(make_model(name, **options(name)), data, train_rows=rows, val_rows=no_rows, max_epochs=2,
               batch_size=128, show_progress=False, random_state=0)
    pl.seed_everything(0, workers=True, verbose=False)
    theirs = make_model(name, **options(name)).build_for(data, rows)
    _own_trainer(2).fit(theirs, datamodule=PreferenceDataModule(data, rows, None, theirs, 128, 0))
    theirs.eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    x = torch.from_numpy(data.item_features[:20])
    with torch.no_grad():
        assert torch.equal(ours.reward(x, None, ours.item_index(data.item_ids[:20])),
                           theirs.reward(x, None, theirs.item_index(data.item_ids[:20])))
    if ours.user_states().shape[1] and hasattr(ours, "user_embedding"):  # recentred, whoever trained it
        assert theirs.user_states().mean(0).abs().max() < 1e-5
