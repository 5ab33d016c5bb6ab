"""benchmarks/synthetic_ceiling.py on the quick synthetic mixture: told the types, it must find them."""

import pytest

from apps.bench import bench_synthetic


@pytest.fixture(scope="module")
def ceiling(benchmark_script):
    return benchmark_script("synthetic_ceiling")


def test_type_rewards_fitted_with_the_types_personalize(ceiling):
    out = ceiling.run("synthetic_mixture", seed=0, penalties=(1.0,), ks=(0, 10), quick=True)
    learned, truth = out["C=1.0"], out["oracle"]
    assert learned[10] - learned[0] > 0.03, out
    assert truth[10] - truth[0] > 0.03, out
    majority = bench_synthetic("synthetic_mixture", quick=True).majority_type_accuracy()
    assert out["seen_test"]["C=1.0"] > majority + 0.02, (out, majority)
    assert out["seen_test"]["C=1.0"] <= out["oracle_accuracy"] + 0.03, out


def test_unknown_synthetic_set_is_rejected():
    with pytest.raises(ValueError, match="unknown synthetic set"):
        bench_synthetic("synthetic_nothing")
