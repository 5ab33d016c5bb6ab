import numpy as np
import pytest

from plural.data.splits import make_episodes, split_comparisons, split_users
from plural.data.synthetic import make_mixture
from plural.evaluation.fewshot import curve_value, few_shot_curve
from plural.core.model import make_model


@pytest.fixture(scope="module")
def setup():
    syn = make_mixture(n_types=2, n_users=60, n_items=120, dim=12, comparisons_per_user=80, type_weights=[0.5, 0.5],
                       scale=12.0, shared_weight=0.2, random_state=1)
    data = syn.data
    seen, unseen = split_users(data, 0.25, random_state=0)
    split = split_comparisons(data, seen, mode="comparisons", random_state=0)
    episodes = make_episodes(data, unseen, n_draws=2, min_query=10, random_state=0)
    bt = make_model("bradley_terry", hidden_dim=16).fit(data, train_rows=split.train, max_epochs=10,
                                                        show_progress=False)
    return data, episodes, bt


def test_population_model_curve_is_flat_and_gains_are_paired(setup):
    data, episodes, bt = setup
    result = few_shot_curve(bt, data, episodes, ks=(0, 2, 10))
    assert result["n_episodes"] == len(episodes)
    for row in result["curve"]:
        # adapt does nothing for BT, and gains are paired on the same episodes, so exactly zero
        assert row["gain_vs_k0"] == pytest.approx(0.0, abs=1e-12)
        assert row["adapt_ms_median"] >= 0 and row["adapt_ms_p99"] >= row["adapt_ms_median"]
        assert 0.5 < row["accuracy"] < 1
    assert np.isnan(curve_value(result, 7))


def test_custom_adapt_fn_is_used(setup):
    data, episodes, bt = setup
    calls = []

    def adapt_fn(model, support):
        calls.append(len(support["label"]))
        return model.adapt(support)

    few_shot_curve(bt, data, episodes[:3], ks=(0, 5), adapt_fn=adapt_fn)
    assert sorted(set(calls)) == [0, 5] and len(calls) == 6


def test_users_without_enough_support_are_left_out_of_that_k(setup):
    data, episodes, bt = setup
    big_k = max(len(e.support_pool) for e in episodes)
    result = few_shot_curve(bt, data, episodes, ks=(0, big_k))
    rows = {row["k"]: row for row in result["curve"]}
    assert rows[big_k]["n_users"] < rows[0]["n_users"]
    assert rows[big_k]["gain_vs_k0"] == pytest.approx(0.0, abs=1e-12)
