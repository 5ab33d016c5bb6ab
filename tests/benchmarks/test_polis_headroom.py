"""benchmarks/polis_headroom.py on planted opinion groups: the vote-matrix reference must find them."""

import pytest

from plural.data.converters import from_votes


@pytest.fixture(scope="module")
def headroom(benchmark_script):
    return benchmark_script("polis_headroom")


def test_the_reference_personalizes_planted_groups(headroom, planted_votes):
    data = from_votes(planted_votes(), group="conversation")
    curves = headroom.run(data, seed=0, n_users=40)
    best = curves["rank=2,lam=0.3"]
    assert best[10]["gain_vs_k0"] > 0.05, best
    assert best[10]["accuracy"] > best[0]["accuracy"]
    assert 50 not in best  # no planted voter's support reaches 50 comparisons


def test_main_writes_the_table(headroom, planted_votes, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(headroom, "load_dataset",
                        lambda name: from_votes(planted_votes(), group="conversation"))
    out = tmp_path / "headroom.json"
    result = headroom.main(["--seeds", "0,1", "--users", "30", "--out", str(out)])
    assert out.is_file() and set(result["best_per_k"]) == {0, 1, 2, 5, 10, 20}
    assert "best per k" in capsys.readouterr().out


def test_needs_conversations(headroom, planted_votes):
    data = from_votes(planted_votes().drop(columns="conversation"))
    with pytest.raises(ValueError, match="conversation"):
        headroom.run(data, seed=0, n_users=10)
