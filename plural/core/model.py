"""The contract every latent-user reward model implements.

A model is a :class:`PreferenceModel` (a ``LightningModule``) built from a small config dataclass.
Following scikit-learn, ``__init__`` only stores the config; the network is built by :meth:`build`
once the data's feature dimension and vocabularies are known (``fit`` does it), and every inference
method checks the model is fitted. Subclasses implement:

- ``_build(feature_dim)``: create the layers;
- ``pair_margin(batch)``: ``r(a) - r(b)`` for the batch's users (training and evaluation);
- ``reward(item_features, user_state=None, item_index=None)``: scores batched over items and users;
- ``user_states()``: the latent vectors of the users seen in training;
- ``adapt(support, prior=None)``: a :class:`UserState` for a new user from a few comparisons, first
  passing them through :meth:`PreferenceModel.check_support` (validation, the :data:`MAX_SUPPORT` cap).

What query time needs of a model is part of the contract too, each with a default that says "this
model has no such thing", so ``plural.query`` never guesses a model's form from its attribute names:

- :attr:`~PreferenceModel.user_dim`: the size of a user state's vector;
- :meth:`~PreferenceModel.user_index`, :meth:`~PreferenceModel.item_index`,
  :meth:`~PreferenceModel.context_index`: ids to the model's indices (-1 for unknown ones);
- :meth:`~PreferenceModel.support_margins`: ``u -> (margins, jacobian)`` of comparisons, for models
  whose predictions are driven by a user vector (active questioning, the user store's prior);
- :meth:`~PreferenceModel.adaptation_prior`: the Gaussian prior ``adapt`` puts on a new user's vector;
- :attr:`~PreferenceModel.adapts_by_map`: whether ``adapt`` is the shared Gauss-Newton MAP on
  :meth:`~PreferenceModel.support_margins` under :meth:`~PreferenceModel.adaptation_prior` (what lets
  ``plural.query.personalize`` replace that prior by the stored users);
- :meth:`~PreferenceModel.retrieval_form`: a :class:`RetrievalForm` when the reward ranks items as an
  inner product or a squared distance (exact FAISS top-n in ``plural.query.recommend``);
- :attr:`~PreferenceModel.likelihood_noise_rate`: the label-flip rate applied to the model's margins;
- :meth:`~PreferenceModel.diagnostics`: named fitted quantities worth reporting (the benchmark's).

Models follow scikit-learn's estimator protocol: :meth:`~PreferenceModel.get_params` and
:meth:`~PreferenceModel.set_params` read and replace the config's fields, so
``sklearn.base.clone(model)`` is an unfitted model with the same config.

The Bradley-Terry likelihood (``plural.core.likelihood``) and the shared train/validation step live here.
Training ends in Lightning's hooks (``on_fit_start``, ``on_train_end``, ``on_fit_end``), so a model
fitted by a user's own ``pl.Trainer`` ends in the state :func:`plural.training.fit.fit` leaves it in.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from plural.core.likelihood import bradley_terry_nll, preference_probability
from plural.core.registry import available_models, make_model, model_class, register_model  # noqa: F401
from plural.core.support import MAX_SUPPORT, check_support  # noqa: F401
from plural.data.observations import following

logger = logging.getLogger(__name__)

Batch = dict  # str -> Tensor; see plural.core.batch.comparison_batch for the keys

class NotFittedError(RuntimeError):
    """Raised when a model is used before it was fitted or loaded."""


INNER_PRODUCT = "inner_product"
SQUARED_DISTANCE = "squared_distance"
RETRIEVAL_KINDS = (INNER_PRODUCT, SQUARED_DISTANCE)


@dataclasses.dataclass(frozen=True)
class RetrievalForm:
    """A reward that an exact nearest-neighbour search can rank: for every user vector ``u`` and item
    ``x`` with vector ``v(x)`` and bias ``b(x)`` (:attr:`items`) and the user's query ``q(u)``
    (:attr:`query`),

    - ``kind="inner_product"``: ``reward(x, u) = v(x) . q(u) + b(x)``;
    - ``kind="squared_distance"``: ``reward(x, u) = -||v(x) - q(u)||^2 + b(x)``.

    :meth:`score` is that formula. Both callables run without gradients, in eval mode, on the model's
    device. What :meth:`PreferenceModel.retrieval_form` returns; ``plural.query.recommend.ItemIndex``
    checks the identity on random users before it relies on it.

    Attributes:
        kind: ``"inner_product"`` or ``"squared_distance"``.
        items: ``(item_features (n, d), item_index (n,) or None) -> (vectors (n, h), bias (n,))``.
        query: ``u (K,) -> (h,)``.
    """

    kind: str
    items: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
    query: Callable[[torch.Tensor], torch.Tensor]

    def __post_init__(self) -> None:
        if self.kind not in RETRIEVAL_KINDS:
            raise ValueError(f"kind must be one of {RETRIEVAL_KINDS}, got {self.kind!r}")

    def score(self, vectors: torch.Tensor, bias: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``(n,)`` rewards of items with ``vectors (n, h)`` and ``bias (n,)`` for the query ``(h,)``."""
        if self.kind == INNER_PRODUCT:
            return (vectors * query).sum(-1) + bias
        return -(vectors - query).pow(2).sum(-1) + bias


@dataclasses.dataclass
class UserState:
    """A user's place in a model's latent space.

    Attributes:
        vector: ``(d_user,)`` latent vector (empty for models without user state).
        covariance: optional ``(d_user, d_user)`` posterior covariance (uncertainty).
        n_comparisons: how many comparisons the state was estimated from.
        user_id: the user's id, where known.
    """

    vector: torch.Tensor
    covariance: torch.Tensor | None = None
    n_comparisons: int = 0
    user_id: str | None = None


@dataclasses.dataclass
class ModelConfig:
    """Fields shared by every model's config; each model subclasses it."""

    hidden_dim: int = 128
    """Width of the item MLP's hidden layer."""
    learning_rate: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    noise_rate: float = 0.0
    """Assumed probability that a training label was flipped at random, in [0, 0.5)."""
    dropout: float = 0.1
    """Dropout in the item MLP."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {self.hidden_dim!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.noise_rate < 0.5:
            raise ValueError(f"noise_rate must be in [0, 0.5), got {self.noise_rate!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class PreferenceModel(pl.LightningModule):
    """Base class of every reward model in plural (see the module docstring)."""

    name: ClassVar[str] = "model"
    min_patience: ClassVar[int] = 0
    """Early stopping waits at least this many epochs without improvement, whatever ``fit`` was
    given: models whose personal part emerges only after a plateau set it."""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    takes_observations: ClassVar[bool] = False
    """True for models that learn from absolute observations (votes, ratings) beside comparisons,
    through thresholds of their items (``plural.core.layers.HybridItems``); built on data with
    observations (and ``config.use_observations``), they get ``observation_levels_`` > 0."""
    listing_order: ClassVar[float] = 1000.0
    """Where the model comes in ordered listings (``available_models(ordered=True)``, the benchmark's
    default models and so its tables): the zoo counts up from the simplest baselines (10) to the
    latent-user models (50 to 80); a model that does not set it comes after them, by name."""

    def __init__(self, config: ModelConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        self.feature_dim_: int | None = None
        self.user_ids_: list[str] = []
        self.user_counts_: list[int] | None = None
        self.user_contexts_: list[list[str]] | None = None
        self.item_ids_: list[str] = []
        self.context_ids_: list[str] = []
        self.observation_levels_: int = 0
        self.save_hyperparameters({"model": self.name, "config": dataclasses.asdict(config)})

    # ------------------------------------------------------------------ building
    def build(self, feature_dim: int, user_ids: Sequence[str], item_ids: Sequence[str],
              context_ids: Sequence[str] = (), user_counts: Sequence[int] | None = None,
              user_contexts: Sequence[Sequence[str]] | None = None,
              observation_levels: int = 0) -> "PreferenceModel":
        """Create the layers for items with ``feature_dim`` features, the users ``user_ids`` seen
        in training, the items ``item_ids`` the model may learn identities for, and the contexts
        ``context_ids`` (prompts, topics) it may learn representations for. Optional, one per user:
        ``user_counts``, their numbers of training comparisons (kept as ``user_counts_``), and
        ``user_contexts``, the ids of the contexts of those comparisons (``user_contexts_``).
        ``observation_levels``: the length of the scale of the observations it learns from (0: none;
        only for models that take them, :attr:`takes_observations`)."""
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim!r}")
        if observation_levels and (not self.takes_observations or int(observation_levels) != observation_levels
                                   or observation_levels < 2):
            raise ValueError(f"observation_levels must be 0, or >= 2 for a model that takes observations "
                             f"({type(self).__name__}: {self.takes_observations}); got {observation_levels!r}")
        self.observation_levels_ = int(observation_levels)
        if user_counts is not None:
            user_counts = [int(c) for c in user_counts]
            if len(user_counts) != len(user_ids) or any(c < 0 for c in user_counts):
                raise ValueError(f"user_counts must hold one count >= 0 per user: got {len(user_counts)} "
                                 f"for {len(user_ids)} users")
        if user_contexts is not None:
            known = {str(c) for c in context_ids}
            user_contexts = [sorted(str(c) for c in cs) for cs in user_contexts]
            unknown = {c for cs in user_contexts for c in cs} - known
            if len(user_contexts) != len(user_ids) or unknown:
                raise ValueError(f"user_contexts must hold one list of known context ids per user: got "
                                 f"{len(user_contexts)} for {len(user_ids)} users, unknown {sorted(unknown)[:3]}")
        self.user_counts_ = user_counts
        self.user_contexts_ = user_contexts
        self.feature_dim_ = int(feature_dim)
        self.user_ids_ = [str(u) for u in user_ids]
        self.item_ids_ = [str(i) for i in item_ids]
        self._user_index = {u: i for i, u in enumerate(self.user_ids_)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids_)}
        self.context_ids_ = [str(c) for c in context_ids]
        self._context_index = {c: i for i, c in enumerate(self.context_ids_)}
        self._build(self.feature_dim_)
        return self

    def build_for(self, data, train_rows) -> "PreferenceModel":
        """:meth:`build` for a ``PreferenceData``: its feature dimension, the users with comparisons at
        ``train_rows`` (with their numbers of comparisons there and those comparisons' contexts), all
        its items and contexts, and the scale of its observations when some follow ``train_rows`` and
        the model takes them."""
        rows = np.asarray(train_rows, dtype=np.int64)
        present, counts = np.unique(data.user[rows], return_counts=True)
        contexts, user_contexts = (), None
        if data.context_ids is not None:
            contexts = data.context_ids
            keyed = rows[data.context[rows] >= 0]
            pairs = np.unique(np.stack([data.user[keyed], data.context[keyed]], axis=1), axis=0)
            cuts = np.searchsorted(pairs[:, 0], present)  # pairs are sorted by user, then context
            ends = np.r_[cuts[1:], len(pairs)]
            user_contexts = [[str(contexts[c]) for c in pairs[a:b, 1]] for a, b in zip(cuts, ends)]
        levels = 0
        if self.takes_observations and getattr(self.config, "use_observations", False) and \
                len(following(data, rows)):
            levels = data.observations.n_levels
        return self.build(data.feature_dim, data.user_ids[present], data.item_ids, contexts, counts.tolist(),
                          user_contexts, levels)

    def _build(self, feature_dim: int) -> None:
        raise NotImplementedError

    @property
    def is_built(self) -> bool:
        return self.feature_dim_ is not None

    def check_is_fitted(self) -> None:
        if not self.is_built:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(data) "
                                 "or load a saved model first")

    def user_index(self, user_ids: Sequence[str]) -> torch.Tensor:
        """Model indices of ``user_ids`` (``(n,)`` long, ids compared as strings); -1 for users not
        seen in training."""
        self.check_is_fitted()
        return torch.tensor([self._user_index.get(str(u), -1) for u in user_ids], dtype=torch.long)

    def item_index(self, item_ids: Sequence[str]) -> torch.Tensor:
        """Model indices of ``item_ids``; -1 for items the model has no identity for."""
        self.check_is_fitted()
        return torch.tensor([self._item_index.get(str(i), -1) for i in item_ids], dtype=torch.long)

    def context_index(self, context_ids: Sequence[str]) -> torch.Tensor:
        """Model indices of ``context_ids``; -1 for contexts the model has no representation for."""
        self.check_is_fitted()
        return torch.tensor([self._context_index.get(str(c), -1) for c in context_ids], dtype=torch.long)

    def check_features(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.feature_dim_:
            raise ValueError(f"{type(self).__name__} expects item features of shape (n, "
                             f"{self.feature_dim_}), got {tuple(features.shape)}")

    def check_support(self, support: Batch | None) -> Batch | None:
        """Validate a new user's support (a batch as made by ``plural.core.batch.comparison_batch``) the
        way training data is validated, and return the batch to adapt on. Every ``adapt`` and
        ``plural.personalize`` call it first.

        Checked (a ``ValueError`` naming the key, the row and the value otherwise): ``label``,
        ``features_a`` and ``features_b`` are present; every per-comparison tensor has one row per
        label; features are float, finite and of shape ``(n, feature_dim_)``; labels are float and one
        of 0, 0.5, 1; weights are float, finite and >= 0; ``item_a``/``item_b``, ``context`` and
        ``user`` are integer and within the model's vocabularies (-1 .. size - 1, -1 meaning unknown).

        Defaults: an absent ``weight`` is one per comparison (as in training), an absent ``item_a`` or
        ``item_b`` is -1 (items known by their features only); ``context`` and ``user`` stay optional.
        A support of more than :data:`MAX_SUPPORT` comparisons is cut to a seeded uniform sample of
        that many (in their original order), with a logged warning.

        Returns:
            None for None; otherwise a new dict (the input is not modified), possibly subsampled.
        """
        return check_support(self, support)

    # ------------------------------------------------------------------ the contract
    def pair_margin(self, batch: Batch) -> torch.Tensor:
        """``(B,)`` reward margins ``r(a) - r(b)`` for each comparison's user."""
        raise NotImplementedError

    def reward(self, item_features: torch.Tensor, user_state: UserState | torch.Tensor | None = None,
               item_index: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of items for users.

        Args:
            item_features: ``(n_items, d)`` item features.
            user_state: a :class:`UserState` (scores ``(n_items,)``), a ``(n_users, d_user)`` tensor of
                user vectors (scores ``(n_users, n_items)``), or None for the population reward.
            item_index: ``(n_items,)`` model item indices (-1 for unknown items), for models with
                learned item identities; None treats every item as new.
        """
        raise NotImplementedError

    def user_states(self) -> torch.Tensor:
        """``(n_users, d_user)`` latent vectors of the users seen in training, in ``user_ids_`` order."""
        raise NotImplementedError

    def population_state(self) -> UserState:
        """The state of a user with no comparisons."""
        raise NotImplementedError

    def adapt(self, support: Batch | None, prior: UserState | None = None) -> UserState:
        """A :class:`UserState` for a new user from the comparisons in ``support`` (a batch as made by
        ``plural.core.batch.comparison_batch``); None or an empty batch gives the population state.
        Implementations start with ``support = self.check_support(support)``."""
        raise NotImplementedError

    def state_margin(self, batch: Batch, state: UserState) -> torch.Tensor:
        """``(B,)`` margins ``r(a) - r(b)`` of the batch's comparisons for one user in ``state``
        (what few-shot evaluation scores). The default goes through :meth:`reward`; models whose
        prediction is not a reward difference (mixtures) or that use contexts override it."""
        ra = self.reward(batch["features_a"], state, batch["item_a"])
        rb = self.reward(batch["features_b"], state, batch["item_b"])
        return ra - rb

    def on_fit_complete(self) -> None:
        """The model's last step of training, once the final (for :func:`plural.training.fit.fit`, the
        best) weights are in place: no-op by default; latent-user models recentre their users here.
        Called, without gradients, by :meth:`on_fit_end`, whatever trainer ran the fit."""

    def on_fit_end(self) -> None:
        """Lightning hook, after the trainer's teardown (the model is back on the CPU, every
        callback's ``on_train_end``, e.g. a restore of the best weights, has run): calls
        :meth:`on_fit_complete`. Subclasses that override it call ``super().on_fit_end()``."""
        with torch.no_grad():
            self.on_fit_complete()

    def initialize_from(self, data, train_rows: np.ndarray, random_state: int = 0) -> None:
        """Called by :func:`plural.training.fit.fit` on a model it has just built, before training:
        a model may set a start for its weights from the training data (``low_rank``'s spectral
        start). Nothing by default."""

    def first_selectable_epoch(self) -> int:
        """Epochs before this one are warm-up: early stopping waits for it and the best-weights
        selection ignores them (0 for most models)."""
        return 0

    def regularization(self) -> torch.Tensor:
        """The model's own regularizers, added to the likelihood in training."""
        return torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ likelihood and steps
    def predict_proba(self, batch: Batch) -> torch.Tensor:
        """``(B,)`` probability that item a is preferred, for the batch's users."""
        self.check_is_fitted()
        return preference_probability(self.pair_margin(batch))

    def nll(self, batch: Batch) -> torch.Tensor:
        return bradley_terry_nll(self.pair_margin(batch), batch["label"], batch.get("weight"),
                                 noise_rate=self.likelihood_noise_rate)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        """The batch's loss; None (no optimizer step) when it depends on no trainable parameter, as
        for models fitted in closed form by their hooks."""
        loss = self._shared_step(batch, "train")
        return loss if loss.requires_grad else None

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "test")

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        margin = self.pair_margin(batch)
        label = batch["label"]
        nll = bradley_terry_nll(margin, label, batch.get("weight"), noise_rate=self.likelihood_noise_rate)
        loss = nll + self.regularization() if stage == "train" else nll
        decisive = label != 0.5
        acc = ((margin[decisive] > 0).float() == label[decisive]).float().mean()
        size = len(label)
        self.log(f"{stage}_loss", nll, prog_bar=stage != "train", batch_size=size, sync_dist=stage != "train")
        if decisive.any():
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=int(decisive.sum()),
                     sync_dist=stage != "train")
        return loss

    def configure_optimizers(self):
        """AdamW over the trainable parameters; None (Lightning then runs without an optimizer) for
        a model that has none, fitted in closed form by its hooks (``item_winrate``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return None
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    @property
    def has_trainable_parameters(self) -> bool:
        """Whether gradient steps have anything to change (a built model without any, such as
        ``item_winrate``'s counts, is fitted by its hooks alone: see :func:`plural.training.fit.fit`)."""
        return any(p.requires_grad for p in self.parameters())

    # ------------------------------------------------------------------ what query time needs
    @property
    def user_dim(self) -> int:
        """Size of a :class:`UserState`'s vector for this model (0 for models without user state).
        The default reads :meth:`population_state`."""
        return int(self.population_state().vector.numel())

    def support_margins(self, support: Batch) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """``u (user_dim,) -> (margins (k,), jacobian (k, user_dim))``, float64, of the comparisons in
        ``support`` (a comparison batch with ``item_a``/``item_b``; moved to the model's device) for a
        user with vector ``u``: what Laplace adaptation, the user store's prior and active questioning
        linearise. The item network runs once, here, not on every call. None (the default) for models
        whose predictions are not driven by a user vector this way."""
        return None

    def adaptation_prior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(mean (K,), covariance (K, K), precision (K, K))`` float64 of the Gaussian prior
        :meth:`adapt` puts on a new user's vector (its precision is the covariance's inverse); None
        (the default) for models that adapt without one."""
        return None

    @property
    def adapts_by_map(self) -> bool:
        """True when :meth:`adapt` is the Gauss-Newton MAP of the (tempered) Bradley-Terry likelihood of
        :meth:`support_margins` under the Gaussian :meth:`adaptation_prior`, with its Laplace
        covariance, so that another prior (``plural.query.personalize``'s mixture over stored users) can
        be put in its place; such a model's config has ``temper_support`` and ``adapt_steps``
        (``plural.core.latent.LatentConfig``). False by default."""
        return False

    def retrieval_form(self) -> RetrievalForm | None:
        """The :class:`RetrievalForm` of the reward of a user state (``reward(x, UserState(u))``) when it
        ranks items as an inner product or a squared distance, for exact top-n search; None (the
        default: scored exactly over the whole catalog)."""
        return None

    @property
    def likelihood_noise_rate(self) -> float:
        """Probability that a label is flipped at random in the Bradley-Terry likelihood of the margins
        this model predicts (``pair_margin``, ``state_margin``): ``config.noise_rate`` by default; 0 for
        models whose margins already include their label noise."""
        return float(self.config.noise_rate)

    def diagnostics(self) -> dict[str, float]:
        """Named fitted quantities worth reporting beside accuracy (the benchmark records them), e.g.
        an estimated label-noise rate; ``{}`` by default."""
        return {}

    # ------------------------------------------------------------------ scikit-learn protocol
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The config's fields, ``{name: value}`` (scikit-learn's estimator protocol: the constructor
        takes them as keyword arguments). ``deep`` is accepted for the protocol; configs hold no
        estimators."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    def set_params(self, **params: Any) -> "PreferenceModel":
        """Replace config fields (validated as the constructor validates them) and return the model.
        On a fitted model, fields that shape its layers take effect only once it is built again;
        ``sklearn.base.clone(model)`` gives an unfitted model with the same config.

        Raises:
            ValueError: a name that is not a config field, or an invalid value.
        """
        if not params:
            return self
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ValueError(f"invalid parameter(s) {unknown} for {type(self).__name__}; valid parameters "
                             f"are the fields of {type(self.config).__name__}: {sorted(fields)}")
        self.config = dataclasses.replace(self.config, **params)
        self.hparams["config"] = dataclasses.asdict(self.config)
        return self

    # ------------------------------------------------------------------ sklearn-style sugar
    def fit(self, data, **kwargs) -> "PreferenceModel":
        """Train on ``data`` (a ``PreferenceData``); see :func:`plural.training.fit.fit`."""
        from plural.training.fit import fit

        return fit(self, data, **kwargs)
