import numpy as np
import pytest
import torch

from plural.query.active import (ActiveSession, answer_entropy, binary_entropy, expected_information_gain,
                           expected_target_variance_reduction, margin_information_gain, rank_questions,
                           simulate_session)
from plural.core.batch import comparison_batch
from plural.evaluation.metrics import pairwise_accuracy
from plural.core.model import make_model


@pytest.fixture(scope="module")
def setup(two_types):
    """Two planted user types; a low-rank model trained on the seen users (``tests/conftest.py``)."""
    _, data, model, episodes = two_types
    return data, model, episodes


def _mc_information(p: torch.Tensor) -> torch.Tensor:
    """``(n_samples, n)`` answer probabilities -> Monte-Carlo ``H[E p] - E[H[p]]`` per column."""
    return binary_entropy(p.mean(0)) - binary_entropy(p).mean(0)


def test_margin_information_gain_matches_monte_carlo():
    mean = torch.tensor([0.0, 0.0, 1.5, -3.0, 0.5, 8.0], dtype=torch.float64)
    var = torch.tensor([0.0, 4.0, 1.0, 9.0, 25.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    m = mean + var.sqrt() * torch.randn(400_000, len(mean), generator=gen, dtype=torch.float64)
    for noise in (0.0, 0.1):
        p = noise + (1 - 2 * noise) * torch.sigmoid(m)
        exact = margin_information_gain(mean, var, noise)
        torch.testing.assert_close(exact, _mc_information(p), atol=2e-3, rtol=0)
    assert margin_information_gain(mean, var)[0] == pytest.approx(0.0, abs=1e-12)  # no uncertainty


def test_eig_is_nonnegative_and_matches_monte_carlo_over_the_user_vector(setup):
    data, model, episodes = setup
    ep = episodes[0]
    candidates = comparison_batch(data, ep.support_pool, model)
    state = model.adapt(comparison_batch(data, episodes[1].support(3), model))
    eig = expected_information_gain(model, state, candidates)
    assert eig.shape == (len(ep.support_pool),) and (eig >= 0).all() and eig.max() > 0.05
    # Monte-Carlo: sample the user vector from the posterior; low_rank margins are linear in it
    gen = torch.Generator().manual_seed(1)
    chol = torch.linalg.cholesky(state.covariance.double())
    u = state.vector.double() + torch.randn(200_000, model.user_dim, generator=gen, dtype=torch.float64) @ chol.T
    with torch.no_grad():
        margins = model.reward(candidates["features_a"], u.float(), candidates["item_a"]) - \
            model.reward(candidates["features_b"], u.float(), candidates["item_b"])
    torch.testing.assert_close(eig, _mc_information(torch.sigmoid(margins.double())), atol=3e-3, rtol=0)


def test_eig_is_zero_for_items_with_the_same_representation(setup):
    data, model, _ = setup
    x = torch.from_numpy(data.item_features[:3])
    candidates = {"features_a": x, "features_b": x.clone(), "item_a": torch.full((3,), -1),
                  "item_b": torch.full((3,), -1)}
    eig = expected_information_gain(model, model.population_state(), candidates)
    # zero up to float32 rounding: both sides go through the item network in one batched pass, where
    # two equal rows need not round alike (8.9e-8 nats seen on one machine, against > 0.05 for real pairs)
    assert eig.abs().max() < 1e-6


def test_eig_of_a_pair_shrinks_once_answered_and_repeats_add_nothing_when_tempered(setup):
    data, model, episodes = setup
    ep = episodes[0]
    candidates = comparison_batch(data, ep.support_pool, model)
    best = int(rank_questions(model, model.population_state(), candidates, n=1)[0])
    pair = {k: v[best:best + 1] for k, v in candidates.items()}

    def gains():
        out = []
        for n in (0, 1, 5, 20):
            support = {k: v.repeat_interleave(n, dim=0) for k, v in pair.items()}
            out.append(float(expected_information_gain(model, model.adapt(support), pair)[0]))
        return out

    tempered = gains()  # the same judgement repeated is one judgement (temper_support)
    assert tempered[1] < tempered[0]
    assert tempered[2] == pytest.approx(tempered[1], rel=1e-5) and tempered[3] == pytest.approx(tempered[1], rel=1e-5)
    model.config.temper_support = False
    try:
        counted = gains()  # counted as independent, every repeat claims more certainty
    finally:
        model.config.temper_support = True
    assert all(a > b for a, b in zip(counted, counted[1:])), counted
    assert counted[-1] < 0.25 * counted[0], counted


def test_rank_questions_orders_by_eig(setup):
    data, model, episodes = setup
    candidates = comparison_batch(data, episodes[0].support_pool, model)
    state = model.population_state()
    eig = expected_information_gain(model, state, candidates).numpy()
    order = rank_questions(model, state, candidates)
    assert sorted(order.tolist()) == list(range(len(eig)))
    assert np.all(np.diff(eig[order]) <= 0)
    assert len(rank_questions(model, state, candidates, n=3)) == 3
    entropy_order = rank_questions(model, state, candidates, criterion="entropy")
    assert np.all(np.diff(answer_entropy(model, state, candidates).numpy()[entropy_order]) <= 0)


def test_targeted_criterion_is_the_drop_in_target_margin_variance(setup):
    data, model, episodes = setup
    candidates = comparison_batch(data, episodes[0].support_pool, model)
    targets = comparison_batch(data, episodes[1].support_pool, model)
    state = model.adapt(comparison_batch(data, episodes[2].support(2), model))
    score = expected_target_variance_reduction(model, state, candidates, targets)
    assert score.shape == (len(episodes[0].support_pool),) and (score >= 0).all()
    # explicit rank-one update for the best candidate, Fisher weights by Monte-Carlo over the margin
    with torch.no_grad():
        jc = model.support_margins(candidates)(state.vector.double())[1]
        mt, jt = model.support_margins(targets)(state.vector.double())
    cov = state.covariance.double()
    gen = torch.Generator().manual_seed(0)

    def fisher(mean, var):
        s = torch.sigmoid(mean + var.sqrt() * torch.randn(200_000, len(mean), generator=gen, dtype=torch.float64))
        return (s * (1 - s)).mean(0)

    mc = model.support_margins(candidates)(state.vector.double())[0]
    i = int(score.argmax())
    j = jc[i]
    lam = fisher(mc[i:i + 1], (j @ cov @ j).reshape(1))[0]
    updated = cov - lam * torch.outer(cov @ j, cov @ j) / (1 + lam * j @ cov @ j)
    w = fisher(mt, ((jt @ cov) * jt).sum(-1))
    drop = (w * (((jt @ cov) * jt).sum(-1) - ((jt @ updated) * jt).sum(-1))).mean()
    assert float(score[i]) == pytest.approx(float(drop), rel=2e-2)
    order = rank_questions(model, state, candidates, criterion="targeted")
    assert order[0] == int(expected_target_variance_reduction(model, state, candidates).argmax())


def _mean_query_accuracy(model, data, episodes, n_questions, strategy, seeds):
    per_episode = []
    for ep in episodes:
        query = comparison_batch(data, ep.query, model)
        accs = []
        for seed in seeds:
            session = simulate_session(model, data, ep.support_pool, n_questions, strategy=strategy,
                                       random_state=seed)
            with torch.no_grad():
                p = torch.sigmoid(model.state_margin(query, session.state)).numpy()
            accs.append(pairwise_accuracy(p, data.label[ep.query]))
        per_episode.append(np.mean(accs))
    return np.array(per_episode)


def test_eig_questions_beat_random_questions(setup):
    """Averaged over 50 episodes of 25 unseen users (random over 3 seeds): asking 2 questions by
    EIG gives clearly higher query accuracy (about +5 points here) than 2 random ones."""
    data, model, episodes = setup
    eig = _mean_query_accuracy(model, data, episodes, 2, "eig", seeds=[0])
    rand = _mean_query_accuracy(model, data, episodes, 2, "random", seeds=[0, 1, 2])
    diff = eig - rand
    assert diff.mean() > 0.02, diff.mean()
    assert diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(len(diff)), (diff.mean(), diff.std())


def test_session_ask_answer_state(setup):
    data, model, episodes = setup
    ep = episodes[0]
    candidates = comparison_batch(data, ep.support_pool, model)
    session = ActiveSession(model, candidates)
    first = session.ask()
    assert session.ask() == first  # pending until answered
    assert first == int(rank_questions(model, model.population_state(), candidates, n=1)[0])
    state = session.answer(1.0)
    assert state.n_comparisons == 1 and len(session.history) == 2 and session.remaining == len(ep.support_pool) - 1
    assert session.scores()[first] == -np.inf and session.ask() != first
    pending = session.ask()
    other = next(i for i in range(len(ep.support_pool)) if i not in (first, pending))
    session.answer(0.0, index=other)  # an app may record an answer to another question
    assert session.ask() == pending and session.asked == [first, other]
    replay = model.adapt(session.support())
    torch.testing.assert_close(session.state.vector, replay.vector)
    # the simulation answers with the recorded labels of the rows asked
    sim = simulate_session(model, data, ep.support_pool, 4, strategy="random", random_state=5)
    np.testing.assert_array_equal(sim.answers, data.label[ep.support_pool[sim.asked]])
    assert len(set(sim.asked)) == 4 and len(sim.history) == 5
    again = simulate_session(model, data, ep.support_pool, 4, strategy="random", random_state=5)
    assert again.asked == sim.asked


def test_models_without_a_gaussian_state_fall_back_on_uncertainty_sampling(setup):
    data, _, episodes = setup
    bt = make_model("bradley_terry", hidden_dim=8).fit(data, max_epochs=1, show_progress=False)
    candidates = comparison_batch(data, episodes[0].support_pool, bt)
    state = bt.population_state()
    torch.testing.assert_close(expected_information_gain(bt, state, candidates),
                               answer_entropy(bt, state, candidates))
    session = simulate_session(bt, data, episodes[0].support_pool, 3, strategy="eig")
    assert len(session.asked) == 3


def test_bad_input_raises(setup):
    data, model, episodes = setup
    pool = episodes[0].support_pool[:2]
    candidates = comparison_batch(data, pool, model)
    empty = comparison_batch(data, pool[:0], model)
    state = model.population_state()
    with pytest.raises(ValueError, match="empty"):
        expected_information_gain(model, state, empty)
    with pytest.raises(ValueError, match="empty"):
        ActiveSession(model, empty)
    with pytest.raises(ValueError, match="empty"):
        simulate_session(model, data, pool[:0], 0)
    with pytest.raises(ValueError, match="strategy"):
        ActiveSession(model, candidates, strategy="greedy")
    with pytest.raises(ValueError, match="criterion"):
        rank_questions(model, state, candidates, criterion="greedy")
    with pytest.raises(ValueError, match="n_questions"):
        simulate_session(model, data, pool, 3)
    with pytest.raises(ValueError, match="features"):
        expected_information_gain(model, state, {"features_a": candidates["features_a"][:, :3],
                                                 "features_b": candidates["features_b"][:, :3]})
    session = ActiveSession(model, candidates)
    with pytest.raises(RuntimeError, match="ask"):
        session.answer(1.0)
    with pytest.raises(ValueError, match="label"):
        session.answer(0.7, index=0)
    with pytest.raises(IndexError):
        session.answer(1.0, index=5)
    session.answer(1.0, index=0)
    with pytest.raises(ValueError, match="already"):
        session.answer(1.0, index=0)
    assert session.ask() == 1
    session.answer(0.0)
    with pytest.raises(RuntimeError, match="nothing left"):
        session.ask()
