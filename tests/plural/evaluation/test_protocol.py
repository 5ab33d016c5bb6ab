"""plural.evaluation.protocol: the protocol's users and splits, written once and used by the bench,
the runs and the benchmark scripts."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from plural.data.splits import split_comparisons, split_users
from plural.data.synthetic import make_population
from plural.evaluation.protocol import ProtocolSplit, default_split_mode, protocol_split, scored_users

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def data():
    data, _ = make_population(n_users=50, n_items=120, dim=8, comparisons_per_user=40, random_state=2)
    return data


def _inline(data, seed, max_unseen_users, mode):
    """The rule as apps/bench.py's bench_users and runs.py wrote it before protocol_split."""
    seen, unseen = split_users(data, 0.2, random_state=seed)
    split = split_comparisons(data, seen, mode=mode, random_state=seed)
    rng = np.random.default_rng(seed)
    scored = unseen if max_unseen_users is None or len(unseen) <= max_unseen_users \
        else np.sort(rng.choice(unseen, max_unseen_users, replace=False))
    return seen, unseen, split, scored


@pytest.mark.parametrize("mode", ["items", "comparisons"])
@pytest.mark.parametrize("seed,cap", [(0, None), (1, 4), (3, 10), (5, 1000)])
def test_identical_to_the_rule_it_replaces(data, mode, seed, cap):
    p = protocol_split(data, seed, mode=mode, max_unseen_users=cap)
    seen, unseen, split, scored = _inline(data, seed, cap, mode)
    for got, want in ((p.seen, seen), (p.unseen, unseen), (p.scored, scored), (p.split.train, split.train),
                      (p.split.val, split.val), (p.split.test, split.test)):
        np.testing.assert_array_equal(got, want)
    assert p.split.n_dropped == split.n_dropped and p.mode == mode and p.seed == seed
    assert len(p.unseen) == 10 and len(p.scored) == min(10, cap or 10)
    assert set(p.scored.tolist()) <= set(p.unseen.tolist()) and list(p.scored) == sorted(p.scored)


def test_mode_comes_from_the_data_unless_given(data):
    assert default_split_mode(data) == "items" and protocol_split(data, 0).mode == "items"
    pairwise = dataclasses.replace(data, meta={**data.meta, "split_mode": "comparisons"})
    assert protocol_split(pairwise, 0).mode == "comparisons" == protocol_split(pairwise, 0).split.mode
    assert protocol_split(pairwise, 0, mode="items").split.mode == "items"
    with pytest.raises(ValueError, match="split mode"):
        protocol_split(data, 0, mode="random")


def test_unseen_fraction_and_the_scored_sample(data):
    p = protocol_split(data, 0, unseen_fraction=0.5)
    assert len(p.unseen) == 25 and len(p.seen) == 25
    assert isinstance(p, ProtocolSplit)
    unseen = np.arange(10, 30)
    assert scored_users(unseen, None, 0) is unseen and scored_users(unseen, 20, 0) is unseen
    np.testing.assert_array_equal(scored_users(unseen, 5, 7), scored_users(unseen, 5, 7))
    assert not np.array_equal(scored_users(unseen, 5, 7), scored_users(unseen, 5, 8))


def _calls(path: Path, name: str) -> int:
    tree = ast.parse(path.read_text())
    return sum(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == name
               for node in ast.walk(tree))


def test_the_rule_is_written_once():
    """Only plural/evaluation/protocol.py splits users for the protocol: the bench, the runs and the
    benchmark scripts call protocol_split."""
    users = [ROOT / "apps" / "bench.py", ROOT / "plural" / "training" / "runs.py",
             *sorted((ROOT / "benchmarks").glob("*.py"))]
    for path in users:
        assert _calls(path, "split_users") == 0, path
        assert _calls(path, "split_comparisons") == 0, path
    for path in [ROOT / "apps" / "bench.py", ROOT / "plural" / "training" / "runs.py",
                 ROOT / "benchmarks" / "polis_headroom.py", ROOT / "benchmarks" / "polis_store_prior.py",
                 ROOT / "benchmarks" / "synthetic_ceiling.py", ROOT / "benchmarks" / "noisy_labels.py",
                 ROOT / "benchmarks" / "adapt_speed.py", ROOT / "benchmarks" / "active_questions.py"]:
        assert _calls(path, "protocol_split") >= 1, path
    assert _calls(ROOT / "plural" / "evaluation" / "protocol.py", "split_users") == 1
