"""plural: pluralistic and personalized preference modeling.

Example:
    >>> import plural
    >>> data = plural.load("ukpconvarg1")                      # doctest: +SKIP
    >>> model = plural.make_model("bradley_terry").fit(data)   # doctest: +SKIP
"""

from plural.active import (ActiveSession, expected_information_gain, expected_target_variance_reduction,
                           rank_questions, simulate_session)
from plural.adapt import StoreMismatchError, build_user_store, check_store_fingerprint, personalize
from plural.batch import comparison_batch
from plural.checkpoint import CheckpointError, load_model, save_model
from plural.data import (PreferenceData, from_file, from_hf_dataset, from_pandas, from_rankings,
                         from_ratings, from_trl, from_votes, load, make_episodes, split_comparisons,
                         split_users)
from plural.encoders import FeatureEncoder, TextEncoder, encode_items
from plural.evaluation import evaluate, predict_proba
from plural.fewshot import few_shot_curve
from plural.model import (MAX_SUPPORT, ModelConfig, NotFittedError, PreferenceModel, UserState, available_models,
                          make_model, register_model)
from plural.recommend import ItemIndex
from plural.scoring import score_items
from plural.store import StoreError, UserStore, model_fingerprint
from plural.training import fit

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
