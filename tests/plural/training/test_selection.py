"""fit's selection="new_users": probe users held out of a scout fit choose the number of epochs."""

import numpy as np
import pytest

from plural.core.model import make_model
from plural.data.synthetic import make_mixture
from plural.training.selection import MIN_PROBE_COMPARISONS, NewUserLoss, probe_plan

QUICK = dict(hidden_dim=16, item_dim=8, n_components=2)


@pytest.fixture(scope="module")
def mixture():
    return make_mixture(n_users=250, n_items=300, dim=16, comparisons_per_user=60, scale=8.0, random_state=0).data


@pytest.fixture(scope="module")
def selected(mixture):
    model = make_model("low_rank", **QUICK)
    rows = np.arange(len(mixture))
    train, val = rows[rows % 10 != 0], rows[rows % 10 == 0]
    model.fit(mixture, train_rows=train, val_rows=val, max_epochs=6, batch_size=256, show_progress=False,
              selection="new_users")
    return model, train


def test_probe_users_come_from_training_rows_only(mixture):
    rows = np.arange(len(mixture))
    train = rows[rows % 10 != 0]
    plan = probe_plan(mixture, train, random_state=0)
    assert plan is not None and len(plan.users) == 25  # a tenth of 250 users
    held = np.setdiff1d(train, plan.train_rows)
    assert np.isin(mixture.user[held], plan.users).all()
    assert not np.isin(mixture.user[plan.train_rows], plan.users).any()
    assert len(held) + len(plan.train_rows) == len(train)
    assert len(plan.data) == len(held)  # the episodes index the probe users' training rows, nothing else
    for episode in plan.episodes:
        assert set(plan.data.items_of(episode.support_pool)).isdisjoint(plan.data.items_of(episode.query))
    again = probe_plan(mixture, train, random_state=0)
    np.testing.assert_array_equal(again.users, plan.users)
    assert not np.array_equal(probe_plan(mixture, train, random_state=1).users, plan.users)


def test_too_few_users_with_enough_comparisons_give_no_plan(mixture):
    rows = np.flatnonzero(mixture.user < 150)  # a tenth of 150 users is under MIN_PROBE_USERS
    assert probe_plan(mixture, rows) is None
    few = np.concatenate([np.flatnonzero(mixture.user == u)[:MIN_PROBE_COMPARISONS - 1] for u in range(250)])
    assert probe_plan(mixture, few) is None


def test_the_scouts_best_epoch_sets_how_long_the_model_trains(selected):
    model, _ = selected
    report = model.fit_report_
    chosen = report["selection"]
    assert chosen["kind"] == "new_users" and chosen["probe_users"] == 25
    assert len(chosen["criterion_by_epoch"]) == chosen["scout_epochs"]
    best = chosen["best_epoch"]
    assert chosen["criterion"] == pytest.approx(min(chosen["criterion_by_epoch"][best:]), abs=1e-6)
    assert chosen["criterion_by_epoch"][best] == pytest.approx(chosen["criterion"], abs=1e-6)
    assert report["best_epoch"] == best and report["epochs"] == best + 1
    assert report["seconds"] >= chosen["scout_seconds"]
    # the criterion is a loss the scout lowered from its first epoch: it measures something that moves
    assert chosen["criterion"] < chosen["criterion_by_epoch"][0]


def test_every_training_user_is_in_the_final_model(selected, mixture):
    model, train = selected
    users = {str(u) for u in mixture.user_ids[np.unique(mixture.user[train])]}
    assert users == {str(u) for u in model.user_ids_}


def test_the_criterion_scores_the_model_without_changing_it(selected, mixture):
    model, train = selected
    plan = probe_plan(mixture, train, random_state=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value = NewUserLoss(plan).score(model)
    assert np.isfinite(value) and value > 0
    for key, tensor in model.state_dict().items():
        assert (tensor == before[key]).all(), key


def test_falls_back_to_validation_loss_and_says_why(mixture):
    rows = np.arange(len(mixture))
    train, val = rows[rows % 10 != 0], rows[rows % 10 == 0]
    plain = make_model("bradley_terry", hidden_dim=16)
    plain.fit(mixture, train_rows=train, val_rows=val, max_epochs=2, show_progress=False, selection="new_users")
    assert plain.fit_report_["selection"] == {"kind": "val_loss", "requested": "new_users",
                                              "reason": "the model has no trained personal part"}
    small = np.flatnonzero(mixture.user < 100)
    latent = make_model("low_rank", **QUICK)
    latent.fit(mixture, train_rows=small[small % 10 != 0], val_rows=small[small % 10 == 0], max_epochs=2,
               show_progress=False, selection="new_users")
    assert latent.fit_report_["selection"]["reason"] == "too few users to hold out as probe users"
    assert latent.fit_report_["best_epoch"] is not None  # selected on validation loss instead


def test_bad_selection_is_refused(mixture):
    import pytorch_lightning as pl

    with pytest.raises(ValueError, match="selection must be one of"):
        make_model("low_rank", **QUICK).fit(mixture, selection="newest", show_progress=False)
    with pytest.raises(ValueError, match="pass no trainer"):
        make_model("low_rank", **QUICK).fit(mixture, selection="new_users",
                                             trainer=pl.Trainer(max_epochs=1, logger=False))


def test_the_criterion_is_the_error_or_the_log_loss_of_the_query(selected, mixture):
    model, train = selected
    plan = probe_plan(mixture, train, random_state=0)
    error, loss = NewUserLoss(plan, metric="error").score(model), NewUserLoss(plan, metric="log_loss").score(model)
    assert 0 < error < 0.5  # the planted types make new users predictable
    assert loss > 0 and loss != error
    with pytest.raises(ValueError, match="metric must be one of"):
        NewUserLoss(plan, metric="auc")


def test_the_bench_config_checks_its_selection():
    from apps.bench import BenchConfig

    assert BenchConfig().selection == "val_loss"
    assert BenchConfig(selection="new_users").selection == "new_users"
    with pytest.raises(ValueError, match="selection must be one of"):
        BenchConfig(selection="newest")
