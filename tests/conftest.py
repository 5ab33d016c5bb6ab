"""Shared fixtures: tiny planted data, fast trainer options, a private encoder cache."""

import logging
import os

# Before torch is imported: tiny test models run fastest on one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from plural.data.synthetic import make_population  # noqa: E402

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)

FAST_FIT = dict(max_epochs=15, batch_size=128, show_progress=False)


@pytest.fixture(scope="session")
def fast_fit():
    """Trainer options that keep unit tests fast."""
    return dict(FAST_FIT)


@pytest.fixture(scope="session")
def planted():
    """60 users sharing one linear reward over 300 items with 16-d features."""
    return make_population(n_users=60, n_items=300, dim=16, comparisons_per_user=60, random_state=0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PLURAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "plural_cache"))
