"""The shared skeleton of latent-user models: hybrid items, a population reward, and a personal
part driven by a K-dimensional user vector that is exactly zero for a user with no comparisons.

A subclass defines ``score(phi, bias, u, context=None)``: the reward of items with representation
``phi (..., h)`` and bias ``(...)`` for users with vectors ``u (..., K)`` (in model contexts ``(...)``,
where the model uses them), broadcasting over leading dimensions, and such that ``u = 0`` gives the
population reward. Everything else (training users as an embedding
table with a Gaussian prior, batched ``reward``, ``user_states``, and ``adapt`` by Gauss-Newton MAP with
a Laplace covariance under the population's empirical prior) lives here, written once, with the
query-time contract that follows from it: ``support_margins`` (forward-mode derivatives of ``score``
by default), ``adaptation_prior`` and ``adapts_by_map``. A subclass whose reward is an inner product
with, or a squared distance to, a function of ``u`` returns that from ``retrieval_form``, built by
``_retrieval_form``.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from plural.core.laplace import gauss_newton_map
from plural.core.layers import HybridItems
from plural.core.likelihood import graph_items, independent_share
from plural.core.model import ModelConfig, PreferenceModel, RetrievalForm, UserState


@dataclasses.dataclass
class LatentConfig(ModelConfig):
    """Fields shared by latent-user models."""

    n_components: int = 8
    """K: the size of the user vector (prototypes, basis rewards or mixture heads)."""
    item_dim: int = 32
    """Dimension of the learned item representation ``phi``."""
    use_identity: bool = True
    """Learn an embedding and bias for items seen in training (hybrid items)."""
    user_l2: float = 1.0
    """Precision of the Gaussian prior on training users' vectors (their L2 penalty). At 10 the
    users of the synthetic mixture barely moved from the population (``ideal_point`` learned no
    personal part at all); users are recentred after training (``on_fit_complete``, run by the
    ``on_fit_end`` hook), so a weak
    prior does not leak population signal into the user vectors."""
    item_l2: float = 100.0
    """Precision of the Gaussian prior on learned item embeddings and biases: item identities must
    earn their place against the features (at 10 they cost 2 to 3 points of seen-user accuracy on
    the synthetic mixture, whose items carry nothing beyond their features)."""
    dropout: float = 0.0
    """Dropout in the item MLP (the Gaussian priors regularize these models)."""
    user_lr_multiplier: float = 30.0
    """Training users' vectors learn this many times faster than the shared weights: each row sees
    only its user's comparisons, so at the shared rate the personal part barely moves."""
    adapt_steps: int = 10
    """Gauss-Newton steps in ``adapt``."""
    prior_scale: float = 0.5
    """Multiplies the empirical prior covariance used by ``adapt``: the training users' vectors are
    point estimates whose spread overstates the population's. With the priors above, 1.0 cost the
    UKPConvArg1 negative control 0.6 points at k=50 and 0.5 kept every k within 0.4 of k=0, while
    Polis gained as much (150 unseen users, one draw)."""
    prior_floor: float = 1e-3
    """Added to the diagonal of the empirical prior covariance used by ``adapt``."""
    temper_training: bool = False
    """Multiply each training user's weights by their independent share, as ``temper_support`` does
    for a new user's support, so a user's pairs formed from the same votes or ratings (and those
    votes) count as the judgements they hold, in training as in ``adapt``."""
    use_observations: bool = True
    """Learn from the data's absolute observations (votes, ratings; ``plural.data.observations``)
    beside its comparisons, where it has them: each is compared with learned thresholds, in training
    and in ``adapt``."""
    temper_support: bool = True
    """``adapt`` multiplies the support's comparison weights by their independent share
    (``plural.core.likelihood.independent_share``): pairs formed from one user's votes or ratings repeat
    the same judgements, and counted as independent they make the posterior overconfident. In the
    3-seed bench (README, "Repeated judgements in a support") it raised the k=50 gain of
    ``low_rank`` from +0.2 to +0.8 on Polis and from +0.3 to +0.9 on MovieLens; supports that form a
    forest (every k <= 10 there, and UKPConvArg1) are unchanged."""

    def validate(self) -> None:
        super().validate()
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components!r}")
        if self.item_dim < 1:
            raise ValueError(f"item_dim must be >= 1, got {self.item_dim!r}")
        if not self.user_l2 > 0:
            raise ValueError(f"user_l2 must be > 0, got {self.user_l2!r}")
        if self.item_l2 < 0:
            raise ValueError(f"item_l2 must be >= 0, got {self.item_l2!r}")
        if not self.prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {self.prior_scale!r}")
        if not self.user_lr_multiplier > 0:
            raise ValueError(f"user_lr_multiplier must be > 0, got {self.user_lr_multiplier!r}")
        if self.adapt_steps < 0:
            raise ValueError(f"adapt_steps must be >= 0, got {self.adapt_steps!r}")


def support_weight(support: dict, temper: bool = True) -> torch.Tensor:
    """``(k,)`` likelihood weights of a new user's support: its comparison weights, times their
    independent share (``plural.core.likelihood.independent_share``) when ``temper``. The rows that
    stand for observations (``level`` >= 0) compare an item with a threshold, one node of the graph
    per threshold: the pairs formed from a user's votes and the votes themselves repeat the same
    judgements, and together count as many as the distinct judgements they can pin down."""
    weight = support["weight"]
    if not temper:
        return weight
    item_b = graph_items(support["item_b"], support["level"]) if "level" in support else support["item_b"]
    return weight * independent_share(support["item_a"], item_b)


@contextlib.contextmanager
def inference(module: nn.Module):
    """Eval mode and no gradients, restoring the previous mode afterwards."""
    was_training = module.training
    if was_training:  # train()/eval() walk every submodule: skip it on the hot path when already in eval
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            module.train(True)


class LatentUserModel(PreferenceModel):
    """Base of the latent-user zoo (see the module docstring)."""

    config_class = LatentConfig
    takes_observations = True

    @property
    def user_dim(self) -> int:
        return self.config.n_components

    def _build(self, feature_dim: int) -> None:
        cfg = self.config
        self.items = HybridItems.from_config(feature_dim, len(self.item_ids_), cfg, self.observation_levels_)
        n_users = len(self.user_ids_)
        self.user_embedding = nn.Embedding(n_users + 1, self.user_dim, padding_idx=n_users)
        nn.init.normal_(self.user_embedding.weight, std=0.01)
        with torch.no_grad():
            self.user_embedding.weight[n_users].zero_()
        self.register_buffer("n_train_", torch.zeros((), dtype=torch.long))
        self._build_head(feature_dim)

    def _build_head(self, feature_dim: int) -> None:
        raise NotImplementedError

    def score(self, phi: torch.Tensor, bias: torch.Tensor, u: torch.Tensor,
              context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ users
    def user_vectors(self, user: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` vectors of model user indices ``user``; zero for -1 (unseen users)."""
        n_users = len(self.user_ids_)
        idx = torch.where(user < 0, torch.full_like(user, n_users), user)
        return self.user_embedding(idx)

    def on_fit_start(self) -> None:
        """Record the number of training comparisons (the priors are spread over them)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_set", None) is not None:
            self.n_train_.fill_(len(dm.train_set))

    def configure_optimizers(self):
        # the users' Gaussian prior (regularization) is their decay; no weight decay on top
        return self._adamw_with_faster("user_embedding.", self.config.user_lr_multiplier, weight_decay=0.0)

    def _adamw_with_faster(self, prefix: str, multiplier: float, weight_decay: float | None = None):
        """AdamW over every parameter, those whose names start with ``prefix`` at ``multiplier``
        times the learning rate (and ``weight_decay`` when given, the config's otherwise)."""
        fast = [p for n, p in self.named_parameters() if n.startswith(prefix)]
        shared = [p for n, p in self.named_parameters() if not n.startswith(prefix)]
        lr = self.config.learning_rate
        groups = [{"params": shared}]
        if fast:
            group = {"params": fast, "lr": lr * multiplier}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay
            groups.append(group)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=self.config.weight_decay)

    def regularization(self) -> torch.Tensor:
        """Gaussian priors on training users' vectors and on item identities, spread over the
        training comparisons so that the mean batch loss estimates the negative log-posterior per
        comparison."""
        n = max(int(self.n_train_), 1)
        users = self.config.user_l2 * self.user_embedding.weight.pow(2).sum()
        return 0.5 * (users + self.config.item_l2 * self.items.identity_penalty()) / n

    def on_fit_complete(self) -> None:
        """Move the training users' mean vector into the population term, where the model allows it
        exactly (``_absorb_user_mean``): then ``u = 0``, the state of a user with no comparisons, is
        the average training user rather than an arbitrary origin the users drifted away from, and
        the zero-mean prior of ``adapt`` is centred where the users are. Run at the end of every fit
        by the ``on_fit_end`` hook (:meth:`plural.core.model.PreferenceModel.on_fit_end`)."""
        absorb = getattr(self, "_absorb_user_mean", None)
        if absorb is None or len(self.user_ids_) < 2:
            return
        with torch.no_grad():
            rows = self.user_embedding.weight[: len(self.user_ids_)]
            mean = rows.mean(0)
            absorb(mean)
            rows -= mean

    # ------------------------------------------------------------------ the contract
    def pair_margin(self, batch: dict) -> torch.Tensor:
        u = self.user_vectors(batch["user"])
        ctx = batch.get("context")
        phi_a, bias_a = self.items(batch["features_a"], batch["item_a"])
        phi_b, bias_b = self.items(batch["features_b"], batch["item_b"], batch.get("level"))
        return self.score(phi_a, bias_a, u, ctx) - self.score(phi_b, bias_b, u, ctx)

    def reward(self, item_features, user_state=None, item_index=None) -> torch.Tensor:
        self.check_is_fitted()
        self.check_features(item_features)
        x = item_features.to(self.device)
        idx = None if item_index is None else item_index.to(self.device)
        phi, bias = self.items(x, idx)
        if isinstance(user_state, torch.Tensor):  # (m, K) -> (m, n)
            u = user_state.to(self.device, phi.dtype)
            return self.score(phi.unsqueeze(0), bias.unsqueeze(0), u.unsqueeze(1))
        vec = torch.zeros(self.user_dim, device=self.device, dtype=phi.dtype) if user_state is None \
            else user_state.vector.to(self.device, phi.dtype)
        return self.score(phi, bias, vec.expand(len(phi), -1))

    def state_margin(self, batch: dict, state: UserState) -> torch.Tensor:
        phi_a, bias_a = self.items(batch["features_a"].to(self.device), batch["item_a"].to(self.device))
        level = batch.get("level")
        phi_b, bias_b = self.items(batch["features_b"].to(self.device), batch["item_b"].to(self.device),
                                   None if level is None else level.to(self.device))
        u = state.vector.to(self.device, phi_a.dtype).expand(len(phi_a), -1)
        ctx = batch.get("context")
        ctx = None if ctx is None else ctx.to(self.device)
        return self.score(phi_a, bias_a, u, ctx) - self.score(phi_b, bias_b, u, ctx)

    def user_states(self) -> torch.Tensor:
        self.check_is_fitted()
        return self.user_embedding.weight[: len(self.user_ids_)].detach()

    def prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (K,), covariance (K, K))`` of a new user's vector: zero mean (a new user starts at
        the population reward) and the empirical second moment of the trained users' vectors. Cached
        until the user vectors or the prior's config change (every ``adapt`` call reads it)."""
        return self.adaptation_prior()[:2]

    def adaptation_prior(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, covariance, precision)`` float64 of :meth:`prior`, the precision its inverse; the
        same cached tensors on every call until the user vectors or the prior's config change (do not
        modify them)."""
        return self._prior_and_precision()

    @property
    def adapts_by_map(self) -> bool:
        """True unless a subclass replaced :meth:`adapt` (the Gauss-Newton MAP written here)."""
        return type(self).adapt is LatentUserModel.adapt

    def _retrieval_form(self, kind: str, query) -> RetrievalForm:
        """A :class:`~plural.core.model.RetrievalForm` of ``kind`` whose items are this model's item
        representation and bias (``self.items``) and whose query is ``query(u)`` (``u`` cast to the
        model's device and dtype); both run under :func:`inference`."""

        def items(features: torch.Tensor, item_index: torch.Tensor | None = None):
            with inference(self):
                idx = None if item_index is None else item_index.to(self.device)
                return self.items(features.to(self.device), idx)

        def user_query(u: torch.Tensor) -> torch.Tensor:
            with inference(self):
                dtype = next(self.items.parameters()).dtype
                return query(torch.as_tensor(u).to(self.device, dtype))

        return RetrievalForm(kind, items, user_query)

    def _prior_and_precision(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight = self.user_embedding.weight
        key = (weight._version, weight.data_ptr(), str(weight.device), self.config.prior_scale,
               self.config.prior_floor, self.config.user_l2)
        cached = getattr(self, "_prior_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        mean, cov = self._empirical_prior()
        value = (mean, cov, torch.linalg.inv(cov))
        self._prior_cache = (key, value)
        return value

    def _empirical_prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.user_states().double()
        k = self.user_dim
        if len(u) < 2:
            cov = torch.eye(k, dtype=torch.float64) / self.config.user_l2
        else:
            cov = self.config.prior_scale * (u.T @ u) / len(u)
        cov = cov + self.config.prior_floor * torch.eye(k, dtype=torch.float64, device=cov.device)
        return torch.zeros(k, dtype=torch.float64, device=cov.device), cov

    def population_state(self) -> UserState:
        self.check_is_fitted()
        mean, cov = self.prior()
        return UserState(vector=mean.float().cpu(), covariance=cov.float().cpu())

    def adapt(self, support=None, prior: UserState | None = None) -> UserState:
        """MAP user vector from ``support`` under a Gaussian prior (the population's by default, or
        ``prior``'s vector and covariance), with the Laplace covariance."""
        support = self.check_support(support)
        if prior is not None and prior.covariance is not None:
            mean, cov = prior.vector.double().to(self.device), prior.covariance.double().to(self.device)
            precision = torch.linalg.inv(cov)
        else:
            mean, cov, precision = self.adaptation_prior()
            if prior is not None:
                mean = prior.vector.double().to(self.device)
        n = 0 if support is None else int(len(support["label"]))
        if n == 0:
            return UserState(vector=mean.float().cpu(), covariance=cov.float().cpu(), n_comparisons=0)
        with inference(self):
            fn = self.support_margins(support)
            u, post_cov = gauss_newton_map(
                fn, support["label"].to(self.device), mean, precision,
                weight=support_weight(support, self.config.temper_support).to(self.device),
                n_steps=self.config.adapt_steps,
                noise_rate=self.likelihood_noise_rate)
        return UserState(vector=u.float().cpu(), covariance=post_cov.float().cpu(), n_comparisons=n)

    def support_margins(self, support: dict):
        """``u -> (margins (k,), jacobian (k, K))`` float64 for the support's comparisons (see
        :meth:`plural.core.model.PreferenceModel.support_margins`). The default differentiates
        ``score`` with forward-mode autodiff; models linear in ``u`` override :meth:`_margins_of`."""
        with inference(self):
            return self._margins_of({k: v.to(self.device) for k, v in support.items()})

    def _margins_of(self, support: dict):
        """:meth:`support_margins` of a support already on the model's device, under :func:`inference`."""
        phi_a, bias_a = self.items(support["features_a"], support["item_a"])
        phi_b, bias_b = self.items(support["features_b"], support["item_b"], support.get("level"))
        ctx = support.get("context")

        def margins(u: torch.Tensor) -> torch.Tensor:
            uu = u.to(phi_a.dtype).expand(len(phi_a), -1)
            return self.score(phi_a, bias_a, uu, ctx) - self.score(phi_b, bias_b, uu, ctx)

        def fn(u: torch.Tensor):
            with torch.enable_grad():
                jac = torch.func.jacfwd(margins)(u.to(phi_a.dtype))
            return margins(u).double(), jac.double()

        return fn
