"""Variational preference learning (VPL).

Follows Poddar et al., "Personalizing Reinforcement Learning from Human Feedback with Variational
Preference Learning" (NeurIPS 2024): a user is a latent variable ``z`` in R^K with prior N(0, I); a
permutation-invariant encoder reads a set of the user's labelled comparisons and returns a Gaussian
posterior ``q(z | comparisons)``; the reward is conditioned on ``z``; training maximizes the ELBO
(Bradley-Terry likelihood of the user's labels minus ``beta`` times the KL to the prior), and a new
user is one encoder pass over their comparisons, with no gradient steps.

Departures from the paper:

1. **Population + personal by construction.** ``r(x, z) = w0 . phi(x) + b(x) + z . (W phi(x))``: the
   personal part is bilinear in ``z``, so it is exactly zero at ``z = 0`` (the prior mean), and a user
   with no comparisons gets the population reward. The paper's reward is an MLP of ``(x, z)``.
2. **Hybrid items** (``plural.core.layers.HybridItems``): ``phi`` and ``b`` come from the item features
   plus a learned embedding and bias for items seen in training. The encoder reads comparisons
   through the same ``phi``: each comparison becomes ``[s (phi_a - phi_b), phi_a + phi_b]`` with
   ``s = 2 label - 1`` (invariant to swapping a and b and flipping the label), goes through an MLP,
   and the set is mean-pooled (weighted by comparison weight); an MLP of the pooled vector and
   ``log(1 + m)`` (``m``: the set size, capped at ``context_size``) gives the mean and log-std of z.
3. **Pyro ELBO with module-local parameters.** The ELBO is Pyro's ``TraceMeanField_ELBO`` (analytic
   KL) over a Pyro ``model`` and ``guide`` that close over this module's own ``nn`` parameters; no
   ``pyro.param`` or ``pyro.module`` is used, so Pyro's global parameter store is never touched and
   any number of VPL models can live in one process.
4. **Episodes from random batches.** Each training batch's comparisons are grouped by user; a
   user's context is a random subset (at most ``context_size``, drawn afresh every step) of all of
   that user's *training* comparisons, which may include the batch's target comparisons of that user
   (the batch carries no row ids to exclude them by). Each target comparison carries ``1/m`` of its
   user's KL, ``m`` being the (weighted) size of the context the posterior was encoded from, so the
   encoder learns the posterior of a user who made ``m`` comparisons: what ``adapt`` returns for a
   support of that size.
5. **Against posterior collapse**: KL annealing (the KL weight ramps from 0 to ``beta`` over
   ``kl_warmup_epochs``) and free bits (a latent dimension whose KL, averaged over the batch's
   users, is below ``free_bits`` nats gets no KL gradient). ``active_units()`` counts the dimensions
   in use and is logged after every training epoch.

6. **Semi-amortized posterior** (after Kim et al., "Semi-Amortized Variational Autoencoders", ICML
   2018): the encoder's mean is the start of ``refine_steps`` Newton steps on the user's own
   comparisons under the N(0, I) prior (the reward is bilinear in z, so each user's log posterior is
   concave and a step is one K x K solve), and the guide's spread is the Laplace one at the refined
   mean. The steps are differentiable, so the reward's personal map learns from z's that already
   differ between users; a purely amortized encoder and the reward wait on each other, and on the
   synthetic mixture neither moved (0 active units). Training, ``user_states`` and ``adapt`` refine
   alike.

``user_states()`` are the posterior means of the training users, each encoded from all of that user's
training comparisons (refreshed before every validation and at the end of training, and saved with
the weights).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from plural.core.latent import LatentConfig, LatentUserModel, inference
from plural.core.layers import HybridItems
from plural.core.likelihood import bradley_terry_nll, preference_probability
from plural.core.model import INNER_PRODUCT, RetrievalForm, UserState, register_model
from user_models.vpl_encoder import (LOG_STD_RANGE, MAX_SAMPLING_KEYS, SetEncoder, gaussian_kl,  # noqa: F401
                                     refine_posterior, sample_context, swap_prior)

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 16384
"""Comparisons per encoder pass when encoding every training user."""
_TRAIN_KEYS = ("indptr", "features", "item_of_row", "row_a", "row_b", "label", "weight", "level",
               "threshold_row")


@dataclasses.dataclass
class VPLConfig(LatentConfig):
    """Config of :class:`VPL`. Of the inherited latent-user fields, ``user_l2``, ``adapt_steps`` and
    ``prior_floor`` are unused: VPL has no embedding table and adapts by one encoder pass."""

    n_components: int = 8
    """K: dimension of the latent user variable ``z``."""
    item_l2: float = 10.0
    """Precision of the Gaussian prior on item identities (VPL keeps the earlier latent default:
    its users are encoded, not embedded, and its benchmarks were run with it)."""
    dropout: float = 0.1
    """Dropout in the item MLP."""
    beta: float = 1.0
    """Weight of the KL term of the ELBO once warmed up (1: the true ELBO; beta-VAE otherwise)."""
    kl_warmup_epochs: int = 5
    """Epochs over which the KL weight ramps linearly from 0 to ``beta`` (0: no warm-up)."""
    free_bits: float = 0.05
    """Per-dimension KL floor in nats: a dimension whose batch-mean KL is below it gets no KL gradient."""
    vary_context_size: bool = False
    """Draw each training user's context size uniformly from 1 to ``context_size``, so the encoder
    sees sets as small as ``adapt`` will give it. Without ``refine_steps`` it was needed (with
    full-size contexts only, one comparison moved a new Polis user's z far enough to cost 5 points at
    k=1); with them a small support gets its exact Laplace posterior under the prior whatever the
    encoder learned, and full contexts train the personal map on all of each user's comparisons (on
    the synthetic mixture, one seed, two Newton steps: +3.0 at k=10 against +1.9 with varied sizes)."""
    context_size: int = 128
    """Most comparisons of a user the encoder reads per training step (a user with more gets a random
    subset each step). 32 left the synthetic mixture's users (about 117 training comparisons each)
    with a noisy z: +1.3 at k=10 against +1.9 at 128 (varied sizes, two Newton steps, one seed)."""
    encoder_hidden: int = 64
    """Width of the set encoder's hidden layers and pooled representation."""
    encoder_lr_multiplier: float = 1.0
    """The set encoder learns this many times faster than the reward's weights (the counterpart of
    ``user_lr_multiplier`` for embedded users). On the synthetic mixture (4 types, 384-d) at 1x the
    encoder's output barely varies across users, even with no KL term (variance about 0.001 per
    dimension after 2 epochs): the reward uses a constant z. At 10x with ``encoder_reads_features``
    all 8 dimensions became active, but the gain stayed small (+0.8 at k=10, -0.5 at k=1, one seed),
    and at 30x it collapsed again; the default keeps the benchmarked behaviour."""
    refine_steps: int = 5
    """Newton steps that refine the encoder's posterior mean on the user's own comparisons before the
    reward sees it (semi-amortized inference; 0: the encoder's output as it is). VPL's reward is
    bilinear, so each user's log posterior is concave in z and the steps are cheap (one K x K solve per
    user). With the refinement the posterior's spread is the Laplace one at the refined mean. Without
    it, on the synthetic mixture the encoder's output stayed flat across users and the reward learned
    no personal part (0 active units, +0.0 at every k): z carried no signal for W to learn from, and
    a flat W gave the encoder none to learn from. The steps are not damped: two from a poor start
    left one new user of the unit tests' two-type population in the other camp on two training seeds
    of three; with five no user was on the wrong side on either seed tried."""
    encoder_reads_features: bool = False
    """The set encoder also reads each comparison's signed feature difference through a linear map
    of its own, beside ``phi`` (which the population reward shapes first). Alone, without a faster
    encoder, it did not lift VPL off its collapsed state on the synthetic mixture (0 active units)."""

    def validate(self) -> None:
        super().validate()
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if self.kl_warmup_epochs < 0:
            raise ValueError(f"kl_warmup_epochs must be >= 0, got {self.kl_warmup_epochs!r}")
        if not self.free_bits >= 0:
            raise ValueError(f"free_bits must be >= 0, got {self.free_bits!r}")
        if self.context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {self.context_size!r}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps!r}")
        if self.encoder_hidden < 1:
            raise ValueError(f"encoder_hidden must be >= 1, got {self.encoder_hidden!r}")
        if not self.encoder_lr_multiplier > 0:
            raise ValueError(f"encoder_lr_multiplier must be > 0, got {self.encoder_lr_multiplier!r}")


class _Posterior(NamedTuple):
    """The guide's Gaussian over the batch's users' z, and each ``(user, dim)``'s KL scale and mask."""

    mean: torch.Tensor
    std: torch.Tensor
    kl_scale: torch.Tensor
    kl_mask: torch.Tensor


# ---------------------------------------------------------------------- the model
@register_model
class VPL(LatentUserModel):
    """``r(x, z) = w0 . phi(x) + b(x) + z . (W phi(x))`` with ``z ~ q(z | the user's comparisons)``."""

    name = "vpl"
    config_class = VPLConfig
    takes_observations = True
    """Votes and ratings reach VPL's reward as threshold comparisons, as for the other latent models,
    and its encoder reads them as comparisons of the item with the thresholds' shared representation
    (which threshold, on a scale of more than two levels, the encoder does not see)."""
    listing_order = 80

    def _build(self, feature_dim: int) -> None:
        cfg = self.config
        h, k = cfg.item_dim, cfg.n_components
        self.items = HybridItems.from_config(feature_dim, len(self.item_ids_), cfg, self.observation_levels_)
        self.population_weight = nn.Parameter(torch.randn(h) / h ** 0.5)
        self.personal_map = nn.Parameter(torch.randn(k, h) / h ** 0.5)
        self.encoder = SetEncoder(h, cfg.encoder_hidden, k, cfg.context_size, cfg.dropout,
                                  feature_dim if cfg.encoder_reads_features else None)
        self.register_buffer("user_means_", torch.zeros(len(self.user_ids_), k))
        self._set_training_index(None)
        self._means_step = -1
        self._elbo = pyro.infer.TraceMeanField_ELBO(max_plate_nesting=2)
        self._step_margin: torch.Tensor | None = None

    def score(self, phi, bias, u, context=None):
        return (phi * (self.population_weight + u @ self.personal_map)).sum(-1) + bias

    # ------------------------------------------------------------------ users
    def user_vectors(self, user: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` posterior means of training users ``user``; zero for -1 (unseen users)."""
        z = self.user_means_[user.clamp_min(0)]
        return z * (user >= 0).unsqueeze(-1).to(z.dtype)

    def user_states(self) -> torch.Tensor:
        """``(n_users, K)`` posterior means of the training users, in ``user_ids_`` order."""
        self.check_is_fitted()
        return self.user_means_.detach().clone()

    def configure_optimizers(self):
        return self._adamw_with_faster("encoder.", self.config.encoder_lr_multiplier)

    def regularization(self) -> torch.Tensor:
        # the KL term of the ELBO regularizes z; item identities get their Gaussian prior here
        n = max(getattr(self, "_n_train", 0), 1)
        return 0.5 * self.config.item_l2 * self.items.identity_penalty() / n

    def prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (K,), covariance (K, K))`` of the prior over z: N(0, I)."""
        k = self.user_dim
        return torch.zeros(k, dtype=torch.float64), torch.eye(k, dtype=torch.float64)

    def adaptation_prior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(0, I, I)``: the N(0, I) prior of z (the encoder's posterior is relative to it)."""
        mean, cov = self.prior()
        return mean, cov, cov.clone()

    def retrieval_form(self) -> RetrievalForm:
        """Inner product: items ``phi(x)``, bias ``b(x)``, query ``w0 + W^T z``."""
        return self._retrieval_form(INNER_PRODUCT, lambda z: self.population_weight + z @ self.personal_map)

    def diagnostics(self) -> dict[str, float]:
        """``{"active_units": active_units()}``."""
        return {"active_units": float(self.active_units())}

    def population_state(self) -> UserState:
        self.check_is_fitted()
        mean, cov = self.prior()
        return UserState(vector=mean.float(), covariance=cov.float())

    def active_units(self, threshold: float = 0.01) -> int:
        """Number of latent dimensions whose posterior mean varies across training users by more
        than ``threshold`` (variance), after Burda et al. (2016)."""
        self.check_is_fitted()
        means = self.user_means_
        if len(means) < 2:
            return 0
        return int((means.var(dim=0, correction=0) > threshold).sum())

    def encode(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (K,), std (K,))`` of the posterior over z given all comparisons of ``batch``."""
        phi_a, bias_a = self.items(batch["features_a"], batch.get("item_a"))
        phi_b, bias_b = self.items(batch["features_b"], batch.get("item_b"), batch.get("level"))
        label = batch["label"]
        weight = batch.get("weight", torch.ones_like(label))
        segment = torch.zeros(len(label), dtype=torch.long, device=phi_a.device)
        mean, log_std = self.encoder(phi_a, phi_b, label, weight, segment, 1,
                                     batch["features_a"], batch["features_b"])
        mean, log_std = self._refine(mean, log_std, (phi_a, bias_a, phi_b, bias_b), label, weight, segment)
        return mean[0], log_std[0].exp()

    def _refine(self, mean, log_std, items, label, weight, segment):
        """The encoder's ``(mean, log_std)`` after ``refine_steps`` Newton steps on each set's own
        comparisons (``items``: their ``(phi_a, bias_a, phi_b, bias_b)``)."""
        if self.config.refine_steps == 0:
            return mean, log_std
        phi_a, bias_a, phi_b, bias_b = items
        diff = phi_a - phi_b
        offset = diff @ self.population_weight + bias_a - bias_b
        mean, std = refine_posterior(mean, diff @ self.personal_map.T, offset, label, weight, segment,
                                     self.config.refine_steps)
        return mean, std.log().clamp(*LOG_STD_RANGE)

    def adapt(self, support=None, prior: UserState | None = None) -> UserState:
        """The posterior over a new user's z from one encoder pass over ``support``: the vector is
        its mean, the covariance its diagonal. ``prior`` replaces the N(0, I) prior the encoder was
        trained under (Gaussian prior swap); None or an empty support gives the prior itself."""
        support = self.check_support(support)
        n = 0 if support is None else int(len(support["label"]))
        if n == 0:
            if prior is None:
                return self.population_state()
            cov = torch.eye(self.user_dim) if prior.covariance is None else prior.covariance
            return UserState(vector=prior.vector.float().cpu(), covariance=cov.float().cpu())
        with inference(self):
            mean, std = self.encode({k: v.to(self.device) for k, v in support.items()})
        mean, var = mean.double().cpu(), std.double().cpu().pow(2)
        if prior is None:
            return UserState(vector=mean.float(), covariance=torch.diag(var).float(), n_comparisons=n)
        mean, cov = swap_prior(mean, var, prior)
        return UserState(vector=mean.float(), covariance=cov.float(), n_comparisons=n)

    # ------------------------------------------------------------------ the training set
    def _set_training_index(self, tensors: dict | None) -> None:
        for key in _TRAIN_KEYS:
            value = None if tensors is None else tensors[key].to(self.device)
            self.register_buffer(f"train_{key}_", value, persistent=False)

    def on_fit_start(self) -> None:
        train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        if train_set is None:
            raise RuntimeError("VPL encodes each user from their training comparisons and reads them "
                               "from the datamodule's train_set; train it with plural.training.fit.fit")
        t = train_set.tensors
        self._n_train = len(train_set)
        rows = torch.nonzero(t["user"] >= 0).squeeze(1)
        rows = rows[torch.argsort(t["user"][rows], stable=True)]
        counts = torch.bincount(t["user"][rows], minlength=len(self.user_ids_))
        # the model's item index of each feature row (an item's index depends on the item alone)
        item_of_row = torch.full((len(train_set.features),), -1, dtype=torch.long)
        item_of_row[train_set.data_item_a] = t["item_a"]
        item_of_row[train_set.data_item_b] = t["item_b"]
        # threshold rows all read one feature row (zero features), whose phi is the thresholds'
        row = train_set.threshold_feature_row
        threshold_row = torch.tensor([] if row is None else [row], dtype=torch.long)
        level = t["level"][rows] if "level" in t else torch.full_like(rows, -1)
        self._set_training_index({
            "threshold_row": threshold_row, "level": level,
            "indptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            "features": train_set.features, "item_of_row": item_of_row,
            "row_a": train_set.data_item_a[rows], "row_b": train_set.data_item_b[rows],
            "label": t["label"][rows], "weight": t["weight"][rows],
        })
        self._means_step = -1

    def on_fit_end(self) -> None:
        self._set_training_index(None)  # do not hold on to the training data
        super().on_fit_end()

    def _encode_positions(self, positions: torch.Tensor, segment: torch.Tensor, n_sets: int):
        """Encode the training comparisons at CSR ``positions`` as ``n_sets`` sets; each distinct
        item goes through the item network once."""
        rows = torch.cat([self.train_row_a_[positions], self.train_row_b_[positions]])
        distinct, inverse = torch.unique(rows, return_inverse=True)
        features = self.train_features_[distinct]
        level = None
        if len(self.train_threshold_row_):  # the thresholds' row: level 0 puts their representation there
            level = torch.where(distinct == self.train_threshold_row_[0], 0, -1)
        phi, bias = self.items(features, self.train_item_of_row_[distinct], level)
        phi_a, phi_b = phi[inverse].chunk(2)
        bias_a, bias_b = bias[inverse].chunk(2)
        comparison_level = self.train_level_[positions]
        if level is not None:  # each threshold comparison's own cut point
            cut = self.items.threshold_biases().to(bias_b.dtype)[comparison_level.clamp_min(0)]
            bias_b = torch.where(comparison_level >= 0, cut, bias_b)
        x_a, x_b = (features[inverse].chunk(2) if self.encoder.feature_map is not None else (None, None))
        label, weight = self.train_label_[positions], self.train_weight_[positions]
        mean, log_std = self.encoder(phi_a, phi_b, label, weight, segment, n_sets, x_a, x_b)
        return self._refine(mean, log_std, (phi_a, bias_a, phi_b, bias_b), label, weight, segment)

    def _refresh_user_means(self, force: bool = False) -> None:
        """Encode every training user from all of their training comparisons into ``user_means_``."""
        if self.train_indptr_ is None or (not force and self._means_step == self.global_step):
            return
        indptr = self.train_indptr_.cpu()
        n_users = len(indptr) - 1
        means = torch.zeros_like(self.user_means_)
        with inference(self):
            first = 0
            while first < n_users:
                last = int(torch.searchsorted(indptr, indptr[first] + ENCODE_CHUNK, right=True)) - 1
                last = min(max(last, first + 1), n_users)
                counts = (indptr[first + 1:last + 1] - indptr[first:last]).to(self.device)
                positions = torch.arange(int(indptr[first]), int(indptr[last]), device=self.device)
                segment = torch.repeat_interleave(torch.arange(last - first, device=self.device), counts)
                mean, _ = self._encode_positions(positions, segment, last - first)
                means[first:last] = mean * (counts > 0).unsqueeze(-1).to(mean.dtype)
                first = last
        self.user_means_.copy_(means)
        self._means_step = self.global_step

    def on_validation_epoch_start(self) -> None:
        self._refresh_user_means()

    def on_train_epoch_end(self) -> None:
        self._refresh_user_means()
        self.log("active_units", float(self.active_units()))

    def on_train_end(self) -> None:
        self._refresh_user_means(force=True)  # after RestoreBestWeights put the best weights back

    # ------------------------------------------------------------------ the ELBO
    def kl_weight(self) -> float:
        """The KL weight at this training step: ``beta``, ramped up linearly over the warm-up."""
        cfg = self.config
        n_batches = self.trainer.num_training_batches
        if cfg.kl_warmup_epochs == 0 or not math.isfinite(n_batches) or n_batches < 1:
            return cfg.beta
        return cfg.beta * min(1.0, self.global_step / (cfg.kl_warmup_epochs * n_batches))

    def _pyro_model(self, batch: dict, slot: torch.Tensor, posterior: _Posterior | None) -> None:
        """z ~ N(0, I) for each user of the batch; labels ~ Bernoulli(sigmoid(r(a, z) - r(b, z)))."""
        phi_a, bias_a = self.items(batch["features_a"], batch["item_a"])
        phi_b, bias_b = self.items(batch["features_b"], batch["item_b"], batch.get("level"))
        z = phi_a.new_zeros(1, self.user_dim)  # the last row: users the model has no index for
        if posterior is not None:
            with pyro.plate("users", len(posterior.mean), dim=-2), \
                    pyro.plate("latent", self.user_dim, dim=-1), \
                    poutine.scale(scale=posterior.kl_scale), poutine.mask(mask=posterior.kl_mask):
                prior = dist.Normal(torch.zeros_like(posterior.mean), torch.ones_like(posterior.mean))
                z = torch.cat([pyro.sample("z", prior), z])
        u = z[slot]
        margin = self.score(phi_a, bias_a, u) - self.score(phi_b, bias_b, u)
        self._step_margin = margin.detach()
        weight = batch["weight"]
        if self.config.noise_rate > 0:
            p = preference_probability(margin, self.config.noise_rate).clamp(1e-7, 1 - 1e-7)
            likelihood = dist.Bernoulli(probs=p, validate_args=False)
        else:
            likelihood = dist.Bernoulli(logits=margin, validate_args=False)  # ties: soft labels
        with pyro.plate("comparisons", len(margin), dim=-1), \
                poutine.scale(scale=torch.where(weight > 0, weight, torch.ones_like(weight))), \
                poutine.mask(mask=weight > 0):
            pyro.sample("label", likelihood, obs=batch["label"].to(margin.dtype))

    def _pyro_guide(self, batch: dict, slot: torch.Tensor, posterior: _Posterior | None) -> None:
        """z ~ N(mean, std^2) from the set encoder, for each user of the batch."""
        if posterior is None:
            return
        with pyro.plate("users", len(posterior.mean), dim=-2), \
                pyro.plate("latent", self.user_dim, dim=-1), \
                poutine.scale(scale=posterior.kl_scale), poutine.mask(mask=posterior.kl_mask):
            pyro.sample("z", dist.Normal(posterior.mean, posterior.std))

    def _posterior(self, user: torch.Tensor, weight: torch.Tensor, beta: float):
        """Encode the batch's users from random contexts; returns the guide's posterior (None when no
        user is known), each comparison's row in ``[z; 0]``, and the KL per comparison (for logging)."""
        known = user >= 0
        users, inverse = torch.unique(user[known], return_inverse=True)
        n = len(users)
        slot = torch.full_like(user, n)
        slot[known] = inverse
        if n == 0:
            return None, slot, weight.new_zeros(())
        positions, segment = sample_context(self.train_indptr_, users, self.config.context_size,
                                            vary_size=self.config.vary_context_size)
        mean, log_std = self._encode_positions(positions, segment, n)
        std = log_std.exp()
        target = weight.new_zeros(n).index_add_(0, inverse, weight[known])
        context = weight.new_zeros(n).index_add_(0, segment, self.train_weight_[positions])
        share = target / context.clamp_min(1e-12)  # each target comparison carries 1/m of the KL
        kl = gaussian_kl(mean, std).detach()
        dim_kl = (share[:, None] * kl).sum(0) / share.sum().clamp_min(1e-12)
        mask = (share > 0)[:, None] & (dim_kl >= self.config.free_bits)[None, :] & (beta > 0)
        scale = torch.where(mask, beta * share[:, None].expand_as(mask), torch.ones_like(kl))
        kl_per_comparison = (share[:, None] * kl).sum() / weight.sum().clamp_min(1e-12)
        return _Posterior(mean, std, scale, mask), slot, kl_per_comparison

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        label, weight = batch["label"], batch["weight"]
        beta = self.kl_weight()
        posterior, slot, kl = self._posterior(batch["user"], weight, beta)
        loss = self._elbo.differentiable_loss(self._pyro_model, self._pyro_guide, batch, slot, posterior)
        loss = loss / weight.sum().clamp_min(1e-12)
        margin, self._step_margin = self._step_margin, None
        size = len(label)
        nll = bradley_terry_nll(margin, label, weight, noise_rate=self.config.noise_rate)
        self.log_dict({"train_loss": loss.detach(), "train_nll": nll, "train_kl": kl,
                       "kl_weight": float(beta)}, batch_size=size)
        decisive = label != 0.5
        if decisive.any():
            acc = ((margin[decisive] > 0).float() == label[decisive]).float().mean()
            self.log("train_acc", acc, prog_bar=True, batch_size=int(decisive.sum()))
        return loss

