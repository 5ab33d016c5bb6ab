"""benchmarks/polis_headroom.py on planted opinion groups: the vote-matrix reference must find them."""

import numpy as np
import pandas as pd
import pytest

from plural.data.converters import from_votes


@pytest.fixture(scope="module")
def headroom(benchmark_script):
    return benchmark_script("polis_headroom")


def planted_votes(random_state=0):
    """Two conversations of 40 statements; each voter is in one of two opinion groups, which vote
    oppositely on the divisive half of the statements and alike (by popularity) on the rest."""
    rng = np.random.default_rng(random_state)
    rows = []
    for conv in ("c0", "c1"):
        popular = rng.normal(size=40)
        divisive = np.r_[np.zeros(20), rng.choice([-2.0, 2.0], 20)]
        for v in range(120):
            side = 1 if v % 2 else -1
            for item in rng.choice(40, 24, replace=False):
                p = 1 / (1 + np.exp(-(popular[item] + side * divisive[item])))
                rows.append((conv, f"v{v}", f"{conv}-s{item}", 1 if rng.random() < p else -1))
    return pd.DataFrame(rows, columns=["conversation", "user_id", "item_id", "vote"])


def test_the_reference_personalizes_planted_groups(headroom):
    data = from_votes(planted_votes(), group="conversation")
    curves = headroom.run(data, seed=0, n_users=40)
    best = curves["rank=2,lam=0.3"]
    assert best[10]["gain_vs_k0"] > 0.05, best
    assert best[10]["accuracy"] > best[0]["accuracy"]
    assert 50 not in best  # no planted voter's support reaches 50 comparisons


def test_main_writes_the_table(headroom, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(headroom, "load_dataset",
                        lambda name: from_votes(planted_votes(), group="conversation"))
    out = tmp_path / "headroom.json"
    result = headroom.main(["--seeds", "0,1", "--users", "30", "--out", str(out)])
    assert out.is_file() and set(result["best_per_k"]) == {0, 1, 2, 5, 10, 20}
    assert "best per k" in capsys.readouterr().out


def test_needs_conversations(headroom):
    data = from_votes(planted_votes().drop(columns="conversation"))
    with pytest.raises(ValueError, match="conversation"):
        headroom.run(data, seed=0, n_users=10)
