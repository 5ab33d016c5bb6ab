"""Query-time code reads a model's capabilities from the contract (``plural.core.model``), never its
class or attribute names: a model that declares a capability gets the fast or exact path, one that
withholds it gets the fallback, whatever it is called."""

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from plural.core.batch import comparison_batch
from plural.core.model import INNER_PRODUCT, make_model, model_class
from plural.query import recommend, store, store_files
from plural.query.active import answer_entropy, expected_information_gain
from plural.query.personalize import build_user_store, personalize, supports_retrieval
from plural.query.recommend import ItemIndex
from plural.query.scoring import score_items

ROOT = Path(__file__).resolve().parents[3]
LowRank = model_class("low_rank")


class WithoutForm(LowRank):
    name = "test_low_rank_without_form"

    def retrieval_form(self):
        return None


class WrongForm(LowRank):
    name = "test_low_rank_wrong_form"

    def retrieval_form(self):
        return self._retrieval_form(INNER_PRODUCT, lambda u: self.population_weight - self.basis @ u)


class WithoutMargins(LowRank):
    name = "test_low_rank_without_margins"

    def support_margins(self, support):
        return None


class OwnPrior(LowRank):
    name = "test_low_rank_not_by_map"

    @property
    def adapts_by_map(self):
        return False


def _like(cls, model):
    twin = cls(model.config)
    twin.build(model.feature_dim_, model.user_ids_, model.item_ids_, model.context_ids_, model.user_counts_,
               model.user_contexts_)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.fixture(scope="module")
def setup(two_types):
    _, data, model, episodes = two_types
    return data, model, episodes


def test_recommend_takes_faiss_and_the_hnsw_threshold_from_the_store():
    assert recommend.AUTO_HNSW_THRESHOLD is store.AUTO_HNSW_THRESHOLD
    assert recommend.import_faiss is store_files.import_faiss
    assert not hasattr(recommend, "_faiss")


def test_item_index_follows_the_declared_form(setup, caplog):
    data, model, _ = setup
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(model.user_dim, generator=gen)
    from plural.core.model import UserState

    want = np.sort(score_items(model, data, UserState(vector=state)))[::-1][:5]
    plain = ItemIndex(_like(WithoutForm, model), data)
    assert plain.form is None and plain.index_kind == "exact"
    with caplog.at_level(logging.WARNING, logger="plural.query.recommend"):
        wrong = ItemIndex(_like(WrongForm, model), data)
    assert wrong.form is None and wrong.index_kind == "exact" and "do not match" in caplog.text
    for index in (plain, wrong, ItemIndex(model, data)):
        got = [s for _, s in index.top_n(UserState(vector=state), n=5)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_with_a_form_under_other_names_is_searched_exactly(planted):
    """VPL's reward is an inner product too (``w0 + W^T z``): it declares the form, and ``ItemIndex``
    searches it although it has no ``basis`` (attribute sniffing scored it exhaustively)."""
    from plural.core.model import UserState

    data, _ = planted
    torch.manual_seed(0)
    model = make_model("vpl", hidden_dim=16, n_components=3, item_dim=8).build(
        data.feature_dim, data.user_ids, data.item_ids).eval()
    index = ItemIndex(model, data)
    assert index.form == "linear" and index.index_kind == "flat"
    gen = torch.Generator().manual_seed(1)
    for state in (None, UserState(vector=2 * torch.randn(3, generator=gen))):
        scores = score_items(model, data, state)
        got = index.top_n(state, n=10)
        np.testing.assert_allclose([s for _, s in got], np.sort(scores)[::-1][:10], rtol=1e-5, atol=1e-5)


def test_active_questioning_uses_support_margins_and_the_likelihood_noise(setup, monkeypatch):
    data, model, episodes = setup
    candidates = comparison_batch(data, episodes[0].support_pool, model)
    state = model.adapt(comparison_batch(data, episodes[1].support(3), model))
    without = _like(WithoutMargins, model)
    torch.testing.assert_close(expected_information_gain(without, state, candidates),
                               answer_entropy(without, state, candidates))
    clean = expected_information_gain(model, state, candidates)
    assert not torch.allclose(clean, answer_entropy(model, state, candidates))
    monkeypatch.setattr(LowRank, "likelihood_noise_rate", property(lambda self: 0.3))
    noisy = expected_information_gain(model, state, candidates)
    assert (noisy <= clean + 1e-9).all() and not torch.allclose(noisy, clean)  # flipped labels tell less


def test_personalize_uses_the_store_only_for_models_adapted_by_map(setup):
    data, model, episodes = setup
    support = comparison_batch(data, episodes[0].support(3), model)
    own = _like(OwnPrior, model)
    assert supports_retrieval(model) and not supports_retrieval(own)
    store_ = build_user_store(model)
    torch.testing.assert_close(personalize(own, store_, support, check_fingerprint=False).vector,
                               own.adapt(support).vector)
    assert not torch.allclose(personalize(model, store_, support).vector, model.adapt(support).vector, atol=1e-4)


QUERY_TIME = ["plural/query/recommend.py", "plural/query/personalize.py", "plural/query/active.py",
              "plural/query/scoring.py", "plural/core/batch.py", "plural/core/model.py", "plural/core/latent.py",
              "plural/training/fit.py", "apps/bench.py", *sorted(str(p.relative_to(ROOT))
                                                               for p in (ROOT / "user_models").glob("*.py"))]
ALLOWED = {"_version"}  # torch's tensor version counter (the prior's cache key)


def _private_uses(path: Path) -> list[str]:
    """``x._name``, ``getattr(x, "_name")`` / ``hasattr`` / ``setattr`` on anything but ``self``/``cls``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            owner, name = node.value, node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 and \
                isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            owner, name = node.args[0], node.args[1].value
        else:
            continue
        if not name.startswith("_") or name.startswith("__") or name in ALLOWED:
            continue
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_query_time_code_uses_no_private_name_of_another_object():
    found = [use for file in QUERY_TIME for use in _private_uses(ROOT / file)]
    assert not found, "\n".join(found)
