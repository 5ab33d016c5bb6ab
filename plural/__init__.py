"""plural: pluralistic and personalized preference modeling.

Example:
    >>> import plural
    >>> data = plural.load("ukpconvarg1")                      # doctest: +SKIP
    >>> model = plural.make_model("bradley_terry").fit(data)   # doctest: +SKIP

The public names below are imported lazily (PEP 562): ``import plural`` loads none of torch,
Lightning, FAISS, pandas or sentence-transformers; ``plural.fit``, ``from plural import fit`` or
``from plural import *`` import the module that defines the name on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # name: the module that defines it
    "ActiveSession": "plural.query.active",
    "expected_information_gain": "plural.query.active",
    "expected_target_variance_reduction": "plural.query.active",
    "rank_questions": "plural.query.active",
    "simulate_session": "plural.query.active",
    "StoreMismatchError": "plural.query.personalize",
    "build_user_store": "plural.query.personalize",
    "check_store_fingerprint": "plural.query.personalize",
    "personalize": "plural.query.personalize",
    "comparison_batch": "plural.core.batch",
    "CheckpointError": "plural.training.checkpoint",
    "load_model": "plural.training.checkpoint",
    "save_model": "plural.training.checkpoint",
    "PreferenceData": "plural.data",
    "from_file": "plural.data",
    "from_hf_dataset": "plural.data",
    "from_pandas": "plural.data",
    "from_rankings": "plural.data",
    "from_ratings": "plural.data",
    "from_trl": "plural.data",
    "from_votes": "plural.data",
    "load": "plural.data",
    "make_episodes": "plural.data",
    "split_comparisons": "plural.data",
    "split_users": "plural.data",
    "FeatureEncoder": "plural.data.encoders",
    "TextEncoder": "plural.data.encoders",
    "encode_items": "plural.data.encoders",
    "evaluate": "plural.evaluation.metrics",
    "predict_proba": "plural.evaluation.metrics",
    "few_shot_curve": "plural.evaluation.fewshot",
    "MAX_SUPPORT": "plural.core.support",
    "ModelConfig": "plural.core.model",
    "NotFittedError": "plural.core.model",
    "PreferenceModel": "plural.core.model",
    "UserState": "plural.core.model",
    "available_models": "plural.core.model",
    "make_model": "plural.core.model",
    "register_model": "plural.core.model",
    "ItemIndex": "plural.query.recommend",
    "score_items": "plural.query.scoring",
    "StoreError": "plural.query.store",
    "UserStore": "plural.query.store",
    "model_fingerprint": "plural.query.store",
    "fit": "plural.training.fit",
    "RewardFunction": "plural.rlhf",
    "best_of_n": "plural.rlhf",
    "best_of_n_batch": "plural.rlhf",
}

_SUBPACKAGES = ("core", "data", "evaluation", "query", "training")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage, ``plural.data``) on first use and keep it."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported eagerly
    from plural.core.batch import comparison_batch
    from plural.core.model import (ModelConfig, NotFittedError, PreferenceModel, UserState, available_models,
                                   make_model, register_model)
    from plural.core.support import MAX_SUPPORT
    from plural.data import (PreferenceData, from_file, from_hf_dataset, from_pandas, from_rankings,
                             from_ratings, from_trl, from_votes, load, make_episodes, split_comparisons,
                             split_users)
    from plural.data.encoders import FeatureEncoder, TextEncoder, encode_items
    from plural.evaluation.fewshot import few_shot_curve
    from plural.evaluation.metrics import evaluate, predict_proba
    from plural.query.active import (ActiveSession, expected_information_gain,
                                     expected_target_variance_reduction, rank_questions, simulate_session)
    from plural.query.personalize import (StoreMismatchError, build_user_store, check_store_fingerprint,
                                          personalize)
    from plural.query.recommend import ItemIndex
    from plural.query.scoring import score_items
    from plural.query.store import StoreError, UserStore, model_fingerprint
    from plural.training.checkpoint import CheckpointError, load_model, save_model
    from plural.training.fit import fit
