"""Fixtures of the benchmark scripts' tests: a ``benchmarks/`` script (not a package) as a module, and
planted Polis-like votes (as a table, and as preferences with one-hot item features)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """``name -> module`` of ``benchmarks/<name>.py``."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _planted_votes(random_state=0):
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


@pytest.fixture(scope="session")
def planted_votes():
    """``random_state -> DataFrame`` of planted Polis-like votes (``_planted_votes``)."""
    return _planted_votes


@pytest.fixture(scope="module")
def planted():
    """The planted votes (``random_state`` 0) as preferences with conversations as contexts and
    one-hot item features."""
    from plural.data.converters import from_votes

    data = from_votes(_planted_votes(), group="conversation")
    return data.with_features(np.eye(len(data.item_ids), dtype=np.float32))
