"""benchmarks/polis_factors.py on planted opinion groups, with items as one-hot features."""

import pytest

from plural.data.converters import from_votes

QUICK = dict(hidden_dim=16, item_dim=8, n_components=2)


@pytest.fixture(scope="module")
def factors(benchmark_script):
    return benchmark_script("polis_factors")


def test_run_scores_every_row_on_the_same_episodes(factors, planted):
    out = factors.run(planted, seed=0, n_users=30, max_epochs=3, model_options=QUICK)
    rows, fits = out["rows"], out["fits"]
    assert len(rows) == 4 * len(factors.LAMS) + 3
    assert fits["random start"]["start"] == {"kind": "random"}
    assert fits["spectral start"]["start"]["kind"] == "spectral"
    reference = rows["ridge, reference factors, lam=0.3"]
    assert reference[10][1] > 0.05, reference  # the planted groups are found from 10 comparisons
    assert 50 not in reference  # no planted voter's support reaches 50 comparisons
    # the untrained spectral start is the reference's factorization: its factors carry the gain too
    assert rows["ridge, untrained spectral start factors, lam=0.3"][10][1] > 0.05
    assert rows["adapt, untrained spectral start"][10][1] > 0.05


def test_needs_conversations_and_votes(factors, planted_votes):
    data = from_votes(planted_votes().drop(columns="conversation"))
    with pytest.raises(ValueError, match="conversation"):
        factors.run(data, seed=0, n_users=10, max_epochs=1, model_options=QUICK)
