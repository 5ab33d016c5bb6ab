"""An EM mixture of reward heads, robust to noisy labels (MaxMin-RLHF's EM, LCPO's label weighting).

Follows the expectation-maximisation of Chakraborty et al., "MaxMin-RLHF: Alignment with Diverse Human
Preferences" (ICML 2024): K reward heads, every user drawn from one of them; the E-step gives each
user a posterior over the heads (responsibilities ``gamma_u``) from all of their comparisons, and the
M-step refits each head on the comparisons weighted by those posteriors. Labels are modelled as
flipped at random with a learned rate ``eps``,
``P(y = a | head k) = (1 - eps) sigmoid(m_k) + eps sigmoid(-m_k)`` with ``m_k = r_k(a) - r_k(b)``,
and, as in Cao et al., "Latent Collective Preference Optimization: A General Framework for Robust LLM
Alignment" (LCPO, 2025), the posterior probability that a label is correct weights it in the M-step.

Departures:

1. The heads share the hybrid item representation (``plural.core.layers.HybridItems``) and a population
   weight: ``r_k(x) = s * ((w0 + v_k) . phi(x) + b(x))``; the offsets ``v_k`` start distinct and
   random so the heads do not collapse onto one another.
2. MaxMin-RLHF hard-assigns users to clusters and refits each reward to convergence; here the E-step
   is soft and runs over the whole training set at the start of every epoch (and once after
   training), and the M-step is the epoch's gradient steps on the expected complete-data
   log-likelihood. ``pi`` and ``eps`` are updated in closed form at each E-step (alternated with the
   responsibilities for ``e_step_iterations`` rounds, the heads fixed), after ``warmup_epochs`` of
   plain mixture fitting.
3. The Bradley-Terry scale and the flip rate trade off (a soft head explains flipped labels as
   Bradley-Terry noise; without correction ``eps`` came out near 0.01 on data with 20% flips), so each
   E-step also refits a global margin temperature ``s`` by Newton's method (``calibrate_scale``).
4. The correctness posterior of a label is recomputed in each training step from the current heads
   (batches carry no row index to cache it by); the users' responsibilities are the epoch's E-step's.
   LCPO down-weights suspect labels (weight ``c``); the exact EM M-step would also fit the flipped
   label with weight ``1 - c``: ``flip_targets=True``.
5. ``eps`` is estimated on the training comparisons, so heads that can memorise their labels (item
   identities and a wide item network on little data) underestimate it.
6. Population + personal by construction: a user with no comparisons has posterior ``pi`` and the
   prediction is the mixture ``P(a > b) = sum_k pi_k sigmoid(m_k)`` (with ``eps`` folded in, see
   ``predict_with_noise``); a new user is the E-step alone.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from torch import nn

from plural.core.batch import ComparisonDataset
from plural.core.latent import LatentConfig, inference, support_weight
from plural.core.layers import HybridItems
from plural.core.label_noise import (categorical_covariance, em_round, fit_margin_scale, mixture_logit,
                                 noisy_label_log_likelihood, rows_of)
from plural.core.likelihood import bradley_terry_nll
from plural.core.model import PreferenceModel, UserState, register_model

logger = logging.getLogger(__name__)

_E_STEP_CHUNK = 8192  # comparisons per block of the E-step, to bound memory


@dataclasses.dataclass
class EMMixtureConfig(LatentConfig):
    """Config of :class:`EMMixture`; ``n_components`` is the number of reward heads K.

    The learned flip rate ``eps`` replaces ``ModelConfig.noise_rate``, which this model ignores; and as
    a new user is fitted by the E-step alone, ``user_l2``, ``adapt_steps`` and ``prior_floor`` are unused.
    """

    init_noise_rate: float = 0.1
    """Initial label-flip rate ``eps`` (kept fixed when ``learn_noise`` is False)."""
    learn_noise: bool = True
    """Re-estimate ``eps`` in closed form at every E-step after the warm-up."""
    max_noise_rate: float = 0.45
    """Upper bound of the learned ``eps`` (at 0.5 labels carry no information)."""
    min_noise_rate: float = 1e-3
    """Lower bound of the learned ``eps`` (0 is a fixed point EM could never leave)."""
    warmup_epochs: int = 2
    """Epochs of plain mixture fitting first: responsibilities updated, ``eps``, ``pi`` and the margin
    scale fixed, every label weighted 1."""
    head_init_scale: float = 1.0
    """Scale of the random initial head offsets ``v_k`` relative to the population weight."""
    e_step_iterations: int = 20
    """Rounds of (margin scale, responsibilities, ``pi``, ``eps``) updates per E-step, heads fixed."""
    calibrate_scale: bool = True
    """Refit a global temperature of the heads' margins at each E-step, jointly with ``eps``: a soft
    head explains flipped labels as Bradley-Terry noise, so without it ``eps`` is underestimated."""
    mixture_pseudocount: float = 1.0
    """Dirichlet pseudo-count per head in the update of ``pi``, so no head's weight reaches zero."""
    flip_targets: bool = False
    """M-step: False weights each label by its correctness posterior ``c`` (LCPO); True also fits the
    flipped label with weight ``1 - c`` (the exact EM M-step)."""
    predict_with_noise: bool = True
    """Predicted probabilities include the learned flip rate, ``eps + (1 - 2 eps) P(a > b)``, so they are
    calibrated for observed labels; False predicts the clean preference."""

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.init_noise_rate < 0.5:
            raise ValueError(f"init_noise_rate must be in [0, 0.5), got {self.init_noise_rate!r}")
        if not 0 < self.max_noise_rate < 0.5:
            raise ValueError(f"max_noise_rate must be in (0, 0.5), got {self.max_noise_rate!r}")
        if not 0 <= self.min_noise_rate <= self.max_noise_rate:
            raise ValueError(f"min_noise_rate must be in [0, max_noise_rate={self.max_noise_rate!r}], "
                             f"got {self.min_noise_rate!r}")
        if self.init_noise_rate > self.max_noise_rate:
            raise ValueError(f"init_noise_rate must be <= max_noise_rate={self.max_noise_rate!r}, "
                             f"got {self.init_noise_rate!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not self.head_init_scale > 0:
            raise ValueError(f"head_init_scale must be > 0, got {self.head_init_scale!r}")
        if self.e_step_iterations < 1:
            raise ValueError(f"e_step_iterations must be >= 1, got {self.e_step_iterations!r}")
        if self.mixture_pseudocount < 0:
            raise ValueError(f"mixture_pseudocount must be >= 0, got {self.mixture_pseudocount!r}")


# ---------------------------------------------------------------------- the model
@register_model
class EMMixture(PreferenceModel):
    """K reward heads ``r_k(x) = (w0 + v_k) . phi(x) + b(x)``; a user is a posterior over the heads.

    Fitted state (buffers, saved with the weights): ``responsibilities`` ``(n_users, K)``,
    ``mixture_weights`` ``pi`` ``(K,)``, ``label_noise`` ``eps`` ``()`` (see :attr:`noise_rate_`) and
    ``margin_scale`` ``s`` ``()``.
    """

    name = "em_mixture"
    listing_order = 70
    min_patience = 8
    """The heads separate only after a plateau (on the synthetic mixture one seed in three stopped
    at epoch 5 with no personal part under a patience of 3; with 8 its best epoch was 9)."""
    config_class = EMMixtureConfig
    takes_observations = True

    @property
    def user_dim(self) -> int:
        return self.config.n_components

    def _build(self, feature_dim: int) -> None:
        cfg = self.config
        h, k = cfg.item_dim, cfg.n_components
        self.items = HybridItems.from_config(feature_dim, len(self.item_ids_), cfg, self.observation_levels_)
        self.population_weight = nn.Parameter(torch.randn(h) / h ** 0.5)
        self.head_offsets = nn.Parameter(cfg.head_init_scale * torch.randn(k, h) / h ** 0.5)
        self.register_buffer("responsibilities", torch.full((len(self.user_ids_), k), 1.0 / k))
        self.register_buffer("mixture_weights", torch.full((k,), 1.0 / k))
        self.register_buffer("label_noise", torch.tensor(float(cfg.init_noise_rate)))
        self.register_buffer("margin_scale", torch.ones(()))

    # ------------------------------------------------------------------ heads and weights
    def head_rewards(self, features: torch.Tensor, item_index: torch.Tensor | None = None) -> torch.Tensor:
        """``(n, K)`` reward of each item under each head."""
        phi, bias = self.items(features, item_index)
        w = self.population_weight + self.head_offsets
        return self.margin_scale * (phi @ w.T + bias.unsqueeze(-1))

    def head_margins(self, batch: dict, scaled: bool = True) -> torch.Tensor:
        """``(B, K)`` margins ``r_k(a) - r_k(b)`` of the batch's comparisons under each head
        (``scaled=False``: before the margin temperature)."""
        phi_a, bias_a = self.items(batch["features_a"], batch["item_a"])
        phi_b, bias_b = self.items(batch["features_b"], batch["item_b"], batch.get("level"))
        w = self.population_weight + self.head_offsets
        margin = (phi_a - phi_b) @ w.T + (bias_a - bias_b).unsqueeze(-1)
        return self.margin_scale * margin if scaled else margin

    def _user_weights(self, user: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` responsibilities of model user indices ``user``; ``pi`` for -1 (unseen users)."""
        return rows_of(self.responsibilities, user, self.mixture_weights)

    def _as_weights(self, vector: torch.Tensor) -> torch.Tensor:
        """``vector`` (``(..., K)`` non-negative) checked and normalised to sum to one."""
        k = self.config.n_components
        if vector.shape[-1] != k or (vector < 0).any():
            raise ValueError(f"{type(self).__name__} user states are posteriors over {k} heads: "
                             f"non-negative vectors of shape (..., {k}), got {tuple(vector.shape)}")
        vector = vector.to(self.device, torch.float32)
        return vector / vector.sum(-1, keepdim=True).clamp_min(1e-12)

    @property
    def _eps(self) -> torch.Tensor:
        return self.label_noise if self.config.predict_with_noise else torch.zeros_like(self.label_noise)

    # ------------------------------------------------------------------ fitted state
    @property
    def noise_rate_(self) -> float:
        """The estimated probability that a training label was flipped."""
        self.check_is_fitted()
        return float(self.label_noise)

    @property
    def likelihood_noise_rate(self) -> float:
        """0: the mixture's margins (``pair_margin``, ``state_margin``) already hold the learned flip
        rate (``predict_with_noise``); ``config.noise_rate`` is not used by this model."""
        return 0.0

    def diagnostics(self) -> dict[str, float]:
        """``{"noise_rate_": the estimated flip rate}`` (:attr:`noise_rate_`)."""
        return {"noise_rate_": self.noise_rate_}

    @property
    def mixture_weights_(self) -> torch.Tensor:
        """``(K,)`` prior ``pi`` over the heads: the state of a user with no comparisons."""
        self.check_is_fitted()
        return self.mixture_weights.detach().cpu().clone()

    # ------------------------------------------------------------------ EM
    def first_selectable_epoch(self) -> int:
        return self.config.warmup_epochs  # eps and pi are not estimated before

    def on_train_epoch_start(self) -> None:
        self._e_step(update=self.current_epoch >= self.config.warmup_epochs)
        self.log("noise_rate", self.label_noise.detach().float())

    def on_train_end(self) -> None:
        # responsibilities that match the final heads (after any restore of the best weights)
        self._e_step(update=self.current_epoch >= self.config.warmup_epochs)

    def _training_comparisons(self) -> ComparisonDataset:
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        if dataset is None:
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if not isinstance(dataset, ComparisonDataset):
            raise RuntimeError(f"{type(self).__name__}'s E-step runs over the training comparisons as a "
                               f"plural.core.batch.ComparisonDataset (plural.training.fit.fit supplies one); got "
                               f"{type(dataset).__name__}")
        return dataset

    def _e_step(self, update: bool) -> None:
        """Responsibilities of every training user from all of their training comparisons; with
        ``update``, alternated with the updates of ``pi``, ``eps`` and the margin scale (heads fixed)."""
        cfg, dataset = self.config, self._training_comparisons()
        with inference(self):
            parts = []
            for start in range(0, len(dataset), _E_STEP_CHUNK):
                batch = dataset.__getitems__(range(start, min(start + _E_STEP_CHUNK, len(dataset))))
                batch = {key: value.to(self.device) for key, value in batch.items()}
                parts.append((self.head_margins(batch, scaled=False), batch["label"], batch["user"],
                              batch["weight"]))
            margin, label, user, weight = (torch.cat(p) for p in zip(*parts))
            for _ in range(cfg.e_step_iterations if update else 1):
                if update and cfg.calibrate_scale:
                    _, correct = noisy_label_log_likelihood(self.margin_scale * margin, label,
                                                            self.label_noise)
                    y = label.unsqueeze(-1)
                    target = correct * y + (1 - correct) * (1 - y)
                    rows = rows_of(self.responsibilities, user, self.mixture_weights) * weight.unsqueeze(-1)
                    self.margin_scale.fill_(fit_margin_scale(margin, target, rows, float(self.margin_scale)))
                gamma, eps, pi = em_round(self.margin_scale * margin, label, user, weight,
                                          self.mixture_weights, self.label_noise,
                                          len(self.responsibilities), cfg.mixture_pseudocount)
                self.responsibilities.copy_(gamma)
                if update:
                    self.mixture_weights.copy_(pi)
                    if cfg.learn_noise:
                        self.label_noise.fill_(float(eps.clamp(cfg.min_noise_rate, cfg.max_noise_rate)))
        logger.debug("E-step: eps=%.4f scale=%.3g pi=%s", float(self.label_noise),
                     float(self.margin_scale), self.mixture_weights.tolist())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """M-step: expected complete-data negative log-likelihood, each comparison weighted by its
        user's responsibilities and (after the warm-up) by the posterior that its label is correct."""
        margin = self.head_margins(batch)
        label = batch["label"].to(margin.dtype).unsqueeze(-1)
        nll_label = -(label * F.logsigmoid(margin) + (1 - label) * F.logsigmoid(-margin))
        if self.current_epoch < self.config.warmup_epochs:
            loss_k = nll_label
        else:
            with torch.no_grad():
                _, correct = noisy_label_log_likelihood(margin, batch["label"], self.label_noise)
            loss_k = correct * nll_label
            if self.config.flip_targets:
                nll_flipped = -((1 - label) * F.logsigmoid(margin) + label * F.logsigmoid(-margin))
                loss_k = loss_k + (1 - correct) * nll_flipped
        weight = batch["weight"]
        per_comparison = (self._user_weights(batch["user"]) * loss_k).sum(-1) * weight
        loss = per_comparison.sum() / weight.sum().clamp_min(1e-12)
        self.log("train_loss", loss, batch_size=len(weight))
        return loss

    def _shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        # validation and test: log-loss and accuracy of the mixture prediction (eps is already in it)
        margin = self.pair_margin(batch)
        label = batch["label"]
        nll = bradley_terry_nll(margin, label, batch.get("weight"))
        decisive = label != 0.5
        self.log(f"{stage}_loss", nll, prog_bar=True, batch_size=len(label), sync_dist=True)
        if decisive.any():
            acc = ((margin[decisive] > 0).float() == label[decisive]).float().mean()
            self.log(f"{stage}_acc", acc, prog_bar=True, batch_size=int(decisive.sum()), sync_dist=True)
        return nll

    # ------------------------------------------------------------------ the contract
    def pair_margin(self, batch: dict) -> torch.Tensor:
        """``(B,)`` logit of the mixture probability that a is preferred, weighted by each user's
        responsibilities (``pi`` for users not seen in training)."""
        return mixture_logit(self.head_margins(batch), self._user_weights(batch["user"]), self._eps)

    def state_margin(self, batch: dict, state: UserState) -> torch.Tensor:
        """``(B,)`` logit of the mixture probability for one user whose posterior is ``state.vector``."""
        self.check_is_fitted()
        batch = {key: value.to(self.device) for key, value in batch.items()}
        return mixture_logit(self.head_margins(batch), self._as_weights(state.vector), self._eps)

    def reward(self, item_features, user_state=None, item_index=None) -> torch.Tensor:
        """Posterior-weighted reward ``sum_k gamma_k r_k(x)`` (for ranking): ``(n_items,)`` for a
        :class:`UserState` or None (``pi``), ``(n_users, n_items)`` for ``(n_users, K)`` posteriors."""
        self.check_is_fitted()
        self.check_features(item_features)
        idx = None if item_index is None else item_index.to(self.device)
        rewards = self.head_rewards(item_features.to(self.device), idx)  # (n, K)
        if isinstance(user_state, torch.Tensor):
            return self._as_weights(user_state) @ rewards.T
        vector = self.mixture_weights if user_state is None else user_state.vector
        return rewards @ self._as_weights(vector)

    def user_states(self) -> torch.Tensor:
        """``(n_users, K)`` posteriors over the heads of the users seen in training."""
        self.check_is_fitted()
        return self.responsibilities.detach().clone()

    def population_state(self) -> UserState:
        """``pi``, with the covariance of the one-hot head indicator under it."""
        self.check_is_fitted()
        pi = self.mixture_weights.detach().cpu().clone()
        return UserState(vector=pi, covariance=categorical_covariance(pi))

    def adapt(self, support=None, prior: UserState | None = None) -> UserState:
        """The E-step for one new user: posterior over the heads from ``support``, starting from
        ``prior.vector`` (default ``pi``), with labels flipped at the learned rate.

        Returns:
            A :class:`UserState` whose ``vector`` is the ``(K,)`` posterior and whose ``covariance`` is
            that of the one-hot head indicator, ``diag(g) - g g^T`` (not a Gaussian's).
        """
        support = self.check_support(support)
        weights = self.mixture_weights if prior is None else self._as_weights(prior.vector)
        n = 0 if support is None else int(len(support["label"]))
        if n == 0:
            posterior = weights.detach().cpu().clone()
            return UserState(vector=posterior, covariance=categorical_covariance(posterior))
        with inference(self):
            batch = {key: value.to(self.device) for key, value in support.items()}
            log_lik, _ = noisy_label_log_likelihood(self.head_margins(batch), batch["label"],
                                                    self.label_noise)
            comparison_weight = support_weight(batch, self.config.temper_support)
            log_post = torch.log(weights).double() + (log_lik * comparison_weight.unsqueeze(-1)).sum(0).double()
            posterior = torch.softmax(log_post, dim=-1).float().cpu()
        return UserState(vector=posterior, covariance=categorical_covariance(posterior), n_comparisons=n)
