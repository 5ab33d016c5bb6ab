"""Models that learn from votes and ratings beside comparisons (plural.data.observations)."""

import numpy as np
import pandas as pd
import pytest
import torch

from plural.core.batch import ComparisonDataset
from plural.core.latent import support_weight
from plural.core.layers import HybridItems
from plural.core.likelihood import label_log_likelihood
from plural.core.model import UserState, make_model
from plural.data.converters import from_votes
from plural.data.splits import make_episodes, split_users
from plural.evaluation.fewshot import few_shot_curve
from plural.training.checkpoint import load_model, save_model

SMALL = dict(hidden_dim=16, item_dim=8, n_components=2)


def two_camps(n_users=80, n_items=40, seed=0):
    """Voters in two camps: each agrees with its camp's statements (the statement's feature says
    which) and disagrees with the other's, 10% of votes flipped; every voter votes on every statement."""
    rng = np.random.default_rng(seed)
    camp_of_item = rng.integers(0, 2, n_items)
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            agree = (camp_of_item[i] == u % 2) ^ (rng.random() < 0.1)
            rows.append((f"v{u}", f"s{i}", 1 if agree else -1))
    votes = pd.DataFrame(rows, columns=["user_id", "item_id", "vote"])
    data = from_votes(votes, max_pairs_per_user=60, random_state=seed)
    features = rng.normal(size=(n_items, 6)).astype(np.float32)
    features[:, 0] = np.where(camp_of_item == 0, 1.0, -1.0)
    order = pd.Index([f"s{i}" for i in range(n_items)]).get_indexer(data.item_ids)
    return data.with_features(features[order])


@pytest.fixture(scope="module")
def camps():
    return two_camps()


@pytest.fixture(scope="module")
def trained(camps):
    seen, unseen = split_users(camps, 0.25, random_state=0)
    rows = np.flatnonzero(np.isin(camps.user, seen))
    model = make_model("low_rank", **SMALL).fit(camps, train_rows=rows, max_epochs=8, batch_size=128,
                                                show_progress=False)
    return model, unseen


def test_a_model_built_on_votes_trains_on_them_and_says_so(camps, trained):
    model, _ = trained
    assert model.observation_levels_ == 2 and model.items.n_thresholds == 1
    assert model.fit_report_["n_train_observation_rows"] > 0
    assert make_model("low_rank", use_observations=False, **SMALL).build_for(camps, np.arange(100)).observation_levels_ == 0
    assert make_model("bradley_terry").build_for(camps, np.arange(100)).observation_levels_ == 0  # pairs only
    plain = ComparisonDataset(camps, np.arange(50), model)
    served = ComparisonDataset(camps, np.arange(50), model, observations=True)
    assert len(plain) == 50 and "level" not in plain.all()
    assert served.n_pairs == 50 and len(served) > 50
    level = served.all()["level"]
    assert (level[:50] == -1).all() and (level[50:] == 0).all()


def test_adapt_is_the_map_of_the_comparisons_and_votes_together(camps, trained):
    """adapt's Gauss-Newton over the linear margins lands where a generic optimiser of the same
    posterior does, that posterior scored through state_margin (the model's other code path)."""
    model, unseen = trained
    dataset = ComparisonDataset(camps, None, model, observations=True)
    rows = np.flatnonzero(camps.user == unseen[0])[:6]
    support = dataset.__getitems__(dataset.with_observations(np.arange(len(camps))[rows]))
    assert (support["level"] >= 0).sum() > 0
    state = model.adapt(support)
    mean, cov = model.prior()
    precision = torch.linalg.inv(cov)
    weight = support_weight(support).double()
    u = torch.zeros(model.user_dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        margin = model.state_margin(support, UserState(vector=u.float())).double()
        loss = -(weight * label_log_likelihood(margin, support["label"].double())).sum() + 0.5 * u @ precision @ u
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(state.vector, u.detach().float(), atol=2e-3, rtol=1e-3)


def test_votes_on_a_support_move_a_new_user_towards_their_camp(camps, trained):
    model, unseen = trained
    episodes = make_episodes(camps, unseen, n_draws=1, random_state=0)
    result = few_shot_curve(model, camps, episodes, ks=(0, 5))
    k0, k5 = result["curve"]
    assert k5["gain_vs_k0"] > 0.1  # two camps that disagree on everything: a few votes tell which
    assert k5["observation_accuracy"] > k0["observation_accuracy"] + 0.1
    assert k5["observation_accuracy"] > 0.75


def test_the_votes_of_a_support_count_as_the_judgements_they_are(camps, trained):
    """Pairs formed from a user's votes and those votes repeat the same judgements: together they
    weigh as many as the votes (the distinct items, each joined to the one threshold)."""
    model, unseen = trained
    dataset = ComparisonDataset(camps, None, model, observations=True)
    rows = np.flatnonzero(camps.user == unseen[1])[:8]
    support = dataset.__getitems__(dataset.with_observations(rows))
    n_items = len(np.unique(np.concatenate([camps.item_a[rows], camps.item_b[rows]])))
    assert int((support["level"] >= 0).sum()) == n_items  # one vote per compared statement
    assert float(support_weight(support).sum()) == pytest.approx(n_items, rel=1e-5)
    assert float(support_weight(support, temper=False).sum()) == pytest.approx(len(rows) + n_items)


def test_a_saved_model_keeps_its_thresholds(camps, trained, tmp_path):
    model, unseen = trained
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.observation_levels_ == 2
    dataset = ComparisonDataset(camps, None, model, observations=True)
    support = dataset.__getitems__(dataset.with_observations(np.flatnonzero(camps.user == unseen[0])[:5]))
    torch.testing.assert_close(loaded.adapt(support).vector, model.adapt(support).vector)


def test_a_support_naming_a_threshold_the_model_lacks_is_refused(camps, trained):
    model, unseen = trained
    dataset = ComparisonDataset(camps, None, model, observations=True)
    support = dataset.__getitems__(dataset.with_observations(np.flatnonzero(camps.user == unseen[0])[:5]))
    bad = dict(support, level=torch.where(support["level"] >= 0, 1, -1))
    with pytest.raises(ValueError, match="support level 1 at row .* past the model's thresholds"):
        model.adapt(bad)
    plain = make_model("low_rank", use_observations=False, **SMALL).fit(
        camps, train_rows=np.arange(300), max_epochs=1, show_progress=False)
    with pytest.raises(ValueError, match="thresholds .*valid: only -1"):
        plain.adapt(support)


def test_thresholds_stay_in_order_whatever_their_parameters():
    items = HybridItems(4, 10, 3, 8, n_levels=5)
    with torch.no_grad():
        items.threshold_gaps.copy_(torch.tensor([-5.0, 3.0, 0.0]))
        items.threshold_start.fill_(-2.0)
    cuts = items.threshold_biases()
    assert cuts.shape == (4,) and (cuts.diff() > 0).all()
    phi, bias = items(torch.zeros(3, 4), torch.tensor([0, -1, 2]), torch.tensor([-1, 3, 0]))
    torch.testing.assert_close(bias[1:], cuts[[3, 0]])
    torch.testing.assert_close(phi[1], items.threshold_embedding)


def test_tempered_training_weighs_each_users_pairs_and_votes_as_their_judgements(camps):
    from plural.training.fit import PreferenceDataModule

    rows = np.arange(len(camps))
    model = make_model("low_rank", temper_training=True, **SMALL).build_for(camps, rows)
    tempered = PreferenceDataModule(camps, rows, None, model).train_set
    plain = PreferenceDataModule(camps, rows, None, make_model("low_rank", **SMALL).build_for(camps, rows)).train_set
    assert len(tempered) == len(plain)
    for user in range(3):  # 60 pairs among m statements, and the m votes on them: m judgements
        mine = tempered.tensors["user"] == user
        m = len(camps.items_of(np.flatnonzero(camps.user == user)))
        assert m > 30 and int((mine & (tempered.tensors["level"] >= 0)).sum()) == m
        assert float(plain.tensors["weight"][mine].sum()) == pytest.approx(60 + m)
        assert float(tempered.tensors["weight"][mine].sum()) == pytest.approx(m, rel=1e-5)


def test_vpl_trains_on_votes_and_its_encoder_reads_them(camps):
    model = make_model("vpl", **SMALL).fit(camps, max_epochs=2, batch_size=256, show_progress=False)
    assert model.observation_levels_ == 2 and model.fit_report_["n_train_observation_rows"] > 0
    dataset = ComparisonDataset(camps, None, model, observations=True)
    support = dataset.__getitems__(dataset.with_observations(np.flatnonzero(camps.user == 0)[:4]))
    votes = support["level"] >= 0
    flipped = dict(support, label=torch.where(votes, 1 - support["label"], support["label"]))
    pairs_only = {k: v[~votes] for k, v in support.items()}
    state, other, without = model.adapt(support), model.adapt(flipped), model.adapt(pairs_only)
    assert not torch.allclose(state.vector, other.vector, atol=1e-6)  # the votes reach the encoder
    assert not torch.allclose(state.vector, without.vector, atol=1e-6)
