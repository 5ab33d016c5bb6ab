"""Shared fixtures: tiny planted data, fast trainer options, a private encoder cache."""

import logging
import os

# Before torch is imported: tiny test models run fastest on one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from plural.data.splits import make_episodes, split_comparisons, split_users  # noqa: E402
from plural.data.synthetic import make_mixture, make_population  # noqa: E402
from plural.core.model import make_model  # noqa: E402

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


@pytest.fixture(scope="session")
def two_types():
    """Two planted user types and a low-rank model trained on the seen users (75%, random split):
    ``(synthetic data, data, model, episodes of the unseen users)``. Shared read-only by the store,
    adaptation and active-questioning tests; tests must not change the model."""
    syn = make_mixture(n_types=2, n_users=100, n_items=150, dim=16, comparisons_per_user=80,
                       type_weights=[0.5, 0.5], scale=12.0, shared_weight=0.2, random_state=3)
    data = syn.data
    seen, unseen = split_users(data, 0.25, random_state=0)
    split = split_comparisons(data, seen, mode="comparisons", random_state=0)
    model = make_model("low_rank", hidden_dim=32, n_components=2, item_dim=8).fit(
        data, train_rows=split.train, val_rows=split.val, max_epochs=25, batch_size=128, show_progress=False)
    episodes = make_episodes(data, unseen, n_draws=2, min_query=10, random_state=0)
    return syn, data, model, episodes


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PLURAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "plural_cache"))
