"""benchmarks/polis_store_prior.py on planted opinion groups, with items as one-hot features."""

import numpy as np
import pytest

from plural.data.converters import from_votes

QUICK = dict(hidden_dim=32, item_dim=8, n_components=2, use_identity=False)  # one-hot features are identities


@pytest.fixture(scope="module")
def store_prior(benchmark_script):
    return benchmark_script("polis_store_prior")


def test_centred_groups_and_mixture_shape(store_prior):
    vectors = np.array([[1.0, 0.0], [3.0, 0.0], [10.0, 5.0], [12.0, 7.0]])
    out = store_prior.centred(vectors, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(out, [[-1, 0], [1, 0], [-1, -1], [1, 1]])
    # a tight blob of users with few comparisons beside a broad one of users with many
    rng = np.random.default_rng(0)
    blobs = np.concatenate([0.05 * rng.normal(size=(200, 2)), 2.0 * rng.normal(size=(200, 2))])
    counts = np.r_[np.full(200, 5), np.full(200, 150)]
    shape = store_prior.mixture_shape(blobs, counts, seed=0)
    assert shape["heldout_loglik_2"] > shape["heldout_loglik_1"] + 0.5
    tight, broad = shape["components"]
    assert tight["median_comparisons"] == 5 and broad["median_comparisons"] == 150
    assert tight["cov_trace"] < 0.1 < 1 < broad["cov_trace"]


def test_run_scores_every_prior_on_the_same_episodes(store_prior, planted):
    out = store_prior.run(planted, seed=0, n_users=30, min_comparisons=20, ks=(0, 2, 10), max_epochs=15,
                          model_options=QUICK)
    curves = out["curves"]
    assert set(curves) == {"adapt", "whole store", ">= 20 comparisons", "own conversation, centred"}
    # k=0 is the population for every prior; the planted groups are found by plain adapt
    assert len({round(c[0]["accuracy"], 9) for c in curves.values()}) == 1
    assert min(c[10]["gain_vs_k0"] for c in curves.values()) > 0.05, curves
    assert out["shape"]["n_users"] > 100 and len(out["shape"]["components"]) == 2


def test_needs_conversations(store_prior, planted_votes):
    data = from_votes(planted_votes().drop(columns="conversation"))
    data = data.with_features(np.eye(len(data.item_ids), dtype=np.float32))
    with pytest.raises(ValueError, match="conversation"):
        store_prior.run(data, seed=0, n_users=10, ks=(0, 1), max_epochs=1, model_options=QUICK)


def test_main_writes_the_table(store_prior, planted, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store_prior, "load_bench_dataset", lambda name: planted)
    out = tmp_path / "prior.json"
    result = store_prior.main(["--seeds", "0", "--users", "20", "--max-epochs", "2", "--out", str(out)])
    assert out.is_file() and set(result["mean_gain_vs_k0"]["adapt"]) == {0, 1, 2, 5, 10, 20}
    printed = capsys.readouterr().out
    assert "| own conversation, centred |" in printed and "held-out log-likelihood" in printed
