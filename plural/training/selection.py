"""Choosing the number of epochs by the few-shot error of users held out of training.

Early stopping on validation log-loss measures the training users' own held-out comparisons. On
MovieLens that loss kept falling to the last of 80 epochs while new users' paired gain at k=10 fell
from +1.0 (10 epochs) to -0.2 (80 epochs) (``low_rank``, seed 1, ``docs/results.md``): the items
learned the training users ever better, and new users less well. :func:`fit`'s ``selection="new_users"``
measures the number of epochs on *probe users* instead:

1. a seeded sample of the training users with enough comparisons is held out (:func:`probe_plan`);
2. a scout model trains on the rest, and after each validation epoch :class:`NewUserLoss` adapts it
   to each probe user's support (item-disjoint episodes of their training comparisons) and scores
   the query: the mean over support sizes of the query's pairwise error is the early-stopping
   criterion;
3. the model itself then trains on every training row for the scout's best number of epochs.

The model ends with every training user in it (a store built from it has them all) and costs about
two fits. Where there are too few users to spare (:data:`MIN_PROBE_USERS`), training selects on
validation log-loss, and the fit report says so.

Measured with ``low_rank`` (``plural bench --selection new_users``, 3 seeds, ``docs/results.md``):
MovieLens +0.1 accuracy at k=10 and k=50, and Polis the same as validation loss. The query's
log-loss as the criterion kept Polis training to epochs 14 to 25 and cost 1.3 points at k=0, so
the error is the default metric.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytorch_lightning as pl
import torch

from plural.data.container import PreferenceData

SELECTIONS = ("val_loss", "new_users")
"""What :func:`plural.training.fit.fit` selects the number of epochs on."""
PROBE_FRACTION = 0.1
"""Share of the training users (with :data:`MIN_PROBE_COMPARISONS`) held out as probe users."""
MAX_PROBE_USERS = 200
"""The most probe users; more add little to the criterion and cost adaptations every epoch."""
MIN_PROBE_USERS = 20
"""Fewer eligible probe users than this and the selection falls back to validation log-loss."""
MIN_PROBE_COMPARISONS = 40
"""A probe user has at least this many training comparisons: item-disjoint halves give a support
pool and a query of about ten or more each."""
PROBE_KS = (0, 10, 50)
"""Support sizes the criterion averages over (each episode serves those its pool reaches)."""
PROBE_DRAWS = 2
"""Item-disjoint episodes per probe user."""
METRICS = ("error", "log_loss")
"""What :class:`NewUserLoss` averages: the query's pairwise error (1 - accuracy) or its log-loss."""
MONITOR = "new_user_loss"
"""The metric :class:`NewUserLoss` puts in the trainer's ``callback_metrics``."""


@dataclasses.dataclass
class ProbePlan:
    """Probe users held out of a scout fit.

    Attributes:
        users: the probe users' indices in ``data``.
        train_rows: the training rows of every other user (the scout trains on these).
        data: ``data`` restricted to the probe users' training rows (episodes index it).
        episodes: item-disjoint episodes of the probe users over ``data``.
    """

    users: np.ndarray
    train_rows: np.ndarray
    data: PreferenceData
    episodes: list


def probe_plan(data: PreferenceData, train_rows: np.ndarray, random_state: int = 0) -> ProbePlan | None:
    """Probe users for ``selection="new_users"``: a seeded sample of :data:`PROBE_FRACTION` of the
    users of ``train_rows`` with at least :data:`MIN_PROBE_COMPARISONS` comparisons there (at most
    :data:`MAX_PROBE_USERS`), or None when fewer than :data:`MIN_PROBE_USERS` would be drawn. Only
    ``train_rows`` are read: the probe users' episodes never see validation or test rows."""
    from plural.data.splits import make_episodes

    train_rows = np.asarray(train_rows, dtype=np.int64)
    users, counts = np.unique(data.user[train_rows], return_counts=True)
    eligible = users[counts >= MIN_PROBE_COMPARISONS]
    n_probe = min(MAX_PROBE_USERS, int(round(PROBE_FRACTION * len(users))), len(eligible))
    if n_probe < MIN_PROBE_USERS:
        return None
    rng = np.random.default_rng([random_state, 1])  # apart from fit's own draws with this seed
    probe = np.sort(rng.choice(eligible, n_probe, replace=False))
    held = np.isin(data.user[train_rows], probe)
    probe_data = data.subset(train_rows[held], name=f"{data.name} probe users")
    episodes = make_episodes(probe_data, probe, mode="items", n_draws=PROBE_DRAWS, random_state=random_state)
    if len({e.user for e in episodes}) < MIN_PROBE_USERS:
        return None
    return ProbePlan(probe, train_rows[~held], probe_data, episodes)


class NewUserLoss(pl.Callback):
    """After each validation epoch, the probe users' few-shot query error, or log-loss (``metric``),
    averaged over :data:`PROBE_KS`, as ``callback_metrics[MONITOR]``, for early stopping and
    :class:`~plural.training.fit.RestoreBestWeights`; put it before them in the callbacks.

    The model is scored as a finished fit would leave it: its ``on_fit_complete`` (the latent
    models' recentring of the users) runs on the weights, which are put back afterwards."""

    def __init__(self, plan: ProbePlan, ks=PROBE_KS, metric: str = "error") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.plan, self.ks, self.metric = plan, tuple(ks), metric
        self.history: list[float] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = self.score(pl_module)
        self.history.append(value)
        trainer.callback_metrics[MONITOR] = torch.tensor(value)

    def score(self, model) -> float:
        from plural.evaluation.fewshot import few_shot_curve

        with torch.inference_mode(False):  # Lightning's validation runs under inference mode
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            try:
                with torch.no_grad():
                    model.on_fit_complete()
                curve = few_shot_curve(model, self.plan.data, self.plan.episodes, self.ks)["curve"]
            finally:
                model.load_state_dict(saved)
        if self.metric == "error":
            return float(np.mean([1.0 - row["accuracy"] for row in curve]))
        return float(np.mean([row["log_loss"] for row in curve]))
