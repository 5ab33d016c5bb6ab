"""plural: pluralistic and personalized preference modeling.

Example:
    >>> import plural
    >>> data = plural.load("ukpconvarg1")                      # doctest: +SKIP
    >>> model = plural.make_model("bradley_terry").fit(data)   # doctest: +SKIP
"""

from plural.query.active import (ActiveSession, expected_information_gain, expected_target_variance_reduction,
                           rank_questions, simulate_session)
from plural.query.personalize import StoreMismatchError, build_user_store, check_store_fingerprint, personalize
from plural.core.batch import comparison_batch
from plural.training.checkpoint import CheckpointError, load_model, save_model
from plural.data import (PreferenceData, from_file, from_hf_dataset, from_pandas, from_rankings,
                         from_ratings, from_trl, from_votes, load, make_episodes, split_comparisons,
                         split_users)
from plural.data.encoders import FeatureEncoder, TextEncoder, encode_items
from plural.evaluation.metrics import evaluate, predict_proba
from plural.evaluation.fewshot import few_shot_curve
from plural.core.model import (MAX_SUPPORT, ModelConfig, NotFittedError, PreferenceModel, UserState, available_models,
                          make_model, register_model)
from plural.query.recommend import ItemIndex
from plural.query.scoring import score_items
from plural.query.store import StoreError, UserStore, model_fingerprint
from plural.training.fit import fit

__version__ = "0.1.0"

__all__ = [
    "MAX_SUPPORT", "CheckpointError", "StoreError", "StoreMismatchError", "check_store_fingerprint",
    "model_fingerprint", "ActiveSession", "FeatureEncoder", "ItemIndex", "ModelConfig", "NotFittedError", "PreferenceData",
    "PreferenceModel", "TextEncoder", "UserState", "UserStore", "available_models", "build_user_store",
    "comparison_batch", "encode_items", "expected_information_gain", "expected_target_variance_reduction", "evaluate", "few_shot_curve", "fit", "from_file",
    "from_hf_dataset", "from_pandas", "from_rankings", "from_ratings", "from_trl", "from_votes", "load",
    "load_model", "make_episodes", "make_model", "predict_proba", "register_model", "save_model",
    "personalize", "rank_questions", "score_items", "simulate_session", "split_comparisons", "split_users",
]
