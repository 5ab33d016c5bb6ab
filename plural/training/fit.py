"""Training: a LightningDataModule over comparisons and :func:`fit`, which wires ``pl.Trainer``.

One device by default, the one :func:`plural.core.device.resolve_device` names (``$PLURAL_DEVICE``,
else CUDA when available, else CPU), early stopping on validation log-loss with the best weights
restored, seeded and deterministic. Trainer options (``devices``, ``strategy``, ``precision``, ...) pass
through, so the same call runs on Lightning's DDP; or pass a configured ``pl.Trainer``.

What is specific to :func:`fit`: the validation hold-out, early stopping (at least the model's
``min_patience``, after its ``first_selectable_epoch``), :class:`RestoreBestWeights` and
``fit_report_``. Everything else a model does at the end of training runs in its Lightning hooks
(``on_fit_start``, ``on_train_end``, ``on_fit_end``: the latent-user models' recentring, the EM
mixture's last E-step, VPL's user encodings, ``item_winrate``'s counts), so a model trained with
``trainer.fit(model, datamodule=PreferenceDataModule(...))`` ends in the state :func:`fit` leaves it
in (with the last epoch's weights instead of the best, unless the trainer has a
:class:`RestoreBestWeights` callback).
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import numpy as np
import pytorch_lightning as pl
import torch

from plural.core.batch import ComparisonDataset, identity_collate
from plural.core.device import resolve_device
from plural.data.container import PreferenceData
from plural.core.model import PreferenceModel
from plural.training.selection import MONITOR, SELECTIONS, NewUserLoss, probe_plan

logger = logging.getLogger(__name__)

DEFAULT_MAX_EPOCHS = 30
"""The fewest epochs :func:`fit` allows when ``max_epochs`` is None (the default)."""
MIN_STEPS = 1000
"""Optimizer steps before early stopping may stop a fit (:func:`fit`'s ``min_steps``). A small set
gives an epoch a handful of steps, and its validation loss need not fall steadily: on the
prompt-dependence benchmark (``benchmarks/prompt_dependence.py``, seed 0: 2,314 training
comparisons, 10 steps an epoch) ``low_rank``'s validation loss was 0.515 at epoch 2, rose to 0.69 by
epoch 56 while the users' vectors fitted noise, then fell to 0.43 at epoch 80, once the item layers
had learned the prompt-response interaction the users disagree on (length-pair test accuracy 86%
against 55% when stopped at epoch 1). Sets with many steps an epoch are unaffected."""


class PreferenceDataModule(pl.LightningDataModule):
    """Train and validation comparisons of one ``PreferenceData`` as batches for ``model``."""

    def __init__(self, data: PreferenceData, train_rows: np.ndarray, val_rows: np.ndarray | None,
                 model: PreferenceModel, batch_size: int = 256, random_state: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.train_set = ComparisonDataset(data, train_rows, model, observations=True)
        self.val_set = None if val_rows is None or len(val_rows) == 0 else \
            ComparisonDataset(data, val_rows, model, observations=True)
        if getattr(model.config, "temper_training", False):
            for dataset in (self.train_set, self.val_set):
                if dataset is not None:
                    dataset.temper_by_user()
        self.batch_size = batch_size
        self.random_state = random_state

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(self.random_state)
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                                           collate_fn=identity_collate, generator=gen)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return torch.utils.data.DataLoader(self.val_set, batch_size=4096, shuffle=False,
                                           collate_fn=identity_collate)


class RestoreBestWeights(pl.Callback):
    """Keep a CPU copy of the weights at the best value of ``monitor`` and restore them at the end,
    so early stopping returns the best model without writing checkpoints to disk."""

    def __init__(self, monitor: str = "val_loss", start_epoch: int = 0) -> None:
        self.monitor = monitor
        self.start_epoch = start_epoch
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: PreferenceModel) -> None:
        if trainer.sanity_checking or trainer.current_epoch < self.start_epoch:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        if self.best_score is None or score < self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self._best_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: PreferenceModel) -> None:
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)


def resolve_trainer_device(accelerator: str | None = None, devices: int | str | list | None = None
                           ) -> tuple[str, int | str | list]:
    """``(accelerator, devices)`` for ``pl.Trainer``: one device unless ``devices`` asks for more.

    Without an ``accelerator``, its type is :func:`plural.core.device.resolve_device`'s
    (``$PLURAL_DEVICE``, else CUDA when available, else CPU), and a device it names by index
    (``"cuda:1"``) is the one used. Lightning's own ``"auto"`` would take every GPU of the host (and
    DDP over them) for a tiny model; ``devices="auto"`` or a count asks for that explicitly.
    """
    if accelerator is None:
        device = resolve_device()
        accelerator = device.type
        if devices is None and device.index is not None:
            devices = [device.index]
    return accelerator, 1 if devices is None else devices


def fit(
    model: PreferenceModel,
    data: PreferenceData,
    *,
    train_rows: np.ndarray | None = None,
    val_rows: np.ndarray | None = None,
    val_fraction: float = 0.1,
    encoder=None,
    max_epochs: int | None = None,
    batch_size: int = 256,
    patience: int = 3,
    min_steps: int = MIN_STEPS,
    random_state: int = 0,
    accelerator: str | None = None,
    devices: int | str | list | None = None,
    strategy: str | None = None,
    precision: str | int | None = None,
    deterministic: bool | str = True,
    show_progress: bool = True,
    selection: str | NewUserLoss = "val_loss",
    trainer: pl.Trainer | None = None,
    **trainer_kwargs,
) -> PreferenceModel:
    """Train ``model`` on comparisons of ``data`` and return it, fitted.

    Args:
        model: an unfitted (or fitted, to continue training) :class:`PreferenceModel`.
        data: the preferences. Items without features are encoded with ``encoder`` (default: the
            packaged MiniLM text encoder).
        train_rows: comparison rows to train on (all by default).
        val_rows: rows for validation log-loss and early stopping; when None, ``val_fraction`` of
            ``train_rows`` is held out at random (seeded). Pass an empty array to disable.
        max_epochs: the most epochs to train. None (the default): enough for ``min_steps``
            optimizer steps, and at least :data:`DEFAULT_MAX_EPOCHS`, plus the patience.
        batch_size: comparisons per step.
        patience: epochs without improvement of validation log-loss that stop training (at least
            ``model.min_patience``); the best weights are restored (:class:`RestoreBestWeights`).
        min_steps: early stopping may stop training only after this many optimizer steps (or
            ``max_epochs`` epochs, if that is sooner). On a small set an epoch is a handful of steps,
            and a validation loss that rises for a few epochs while the personal part moves used to
            stop training at epoch 0 or 1, before the shared layers had learned what the users share.
        random_state: seeds weights, shuffling and the validation draw.
        accelerator, devices: where to train (:func:`resolve_trainer_device`): by default one device,
            of the type :func:`plural.core.device.resolve_device` gives; ``devices=2`` or ``"auto"``
            (every device of the accelerator) for more.
        strategy: Lightning's strategy (``"auto"`` by default; ``"ddp"`` with ``devices=2``, ...).
        precision, **trainer_kwargs: passed to ``pl.Trainer``.
        deterministic: passed to ``pl.Trainer`` (True: a seed repeats a fit bit for bit; False or
            ``"warn"`` allows faster nondeterministic kernels).
        show_progress: a progress bar.
        selection: what the number of epochs is selected on. ``"val_loss"``: early stopping on
            the validation log-loss of the training users' held-out comparisons, best weights
            restored. ``"new_users"``: the few-shot error of probe users held out of a first, scout
            fit; the model then trains on every training row for the scout's best number of epochs
            (:mod:`plural.training.selection`; about twice the time). Models with no personal part,
            too few users to spare, or no validation rows select on ``"val_loss"``; the report's
            ``selection`` says which was used and why. A :class:`~plural.training.selection.NewUserLoss`
            callback: early stopping on it (the scout's own fit).
        trainer: a configured ``pl.Trainer`` to fit with instead of the one built from the options
            above, which must then be left unset: ``fit`` still splits the data, seeds, builds the model
            and reports, but training (epochs, callbacks, early stopping, devices) is the trainer's;
            add a :class:`RestoreBestWeights` to its callbacks to end on the best weights.

    A model with no trainable parameters (``item_winrate``) is fitted by its hooks alone: no epochs,
    no optimizer step, and no validation rows held out (there is nothing to select).

    Returns:
        ``model``, trained; ``model.fit_report_`` holds epochs, best validation loss and seconds.
    """
    if not isinstance(data, PreferenceData):
        raise TypeError(f"data must be a PreferenceData, got {type(data).__name__}")
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {min_steps!r}")
    if max_epochs is not None and max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0, got {max_epochs!r}")
    if not isinstance(selection, NewUserLoss) and selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if selection == "new_users" and trainer is not None:
        raise ValueError("selection='new_users' trains a scout model with fit's own trainer: pass no trainer")
    if trainer is not None:
        if not isinstance(trainer, pl.Trainer):
            raise TypeError(f"trainer must be a pytorch_lightning.Trainer, got {type(trainer).__name__}")
        given = {"accelerator": accelerator, "devices": devices, "strategy": strategy, "precision": precision}
        given = [k for k, v in given.items() if v is not None] + (["deterministic"] if deterministic is not True else [])
        given += sorted(trainer_kwargs)
        if given:
            raise ValueError(f"fit got a trainer and trainer options ({', '.join(given)}): configure the "
                             "trainer itself")
    from plural.data.encoders import TextEncoder, ensure_features, resolve_encoder

    encoder_spec, n_long = getattr(model, "encoder_spec_", None), 0
    if isinstance(data.meta.get("encoder"), dict):  # embedded before (plural.data.prompts.with_prompts)
        encoder_spec, n_long = data.meta["encoder"], int(data.meta.get("n_long_texts", 0))
    elif data.item_features is None:  # the texts are embedded here: the encoder becomes part of the model
        encoder = resolve_encoder(encoder_spec, encoder) or TextEncoder()
        before = getattr(encoder, "n_long_", 0)
        data = ensure_features(data, encoder)
        if isinstance(encoder, TextEncoder):
            encoder_spec, n_long = encoder.spec, encoder.n_long_ - before
    rng = np.random.default_rng(random_state)
    train_rows = np.arange(len(data)) if train_rows is None else np.asarray(train_rows, dtype=np.int64)
    if len(train_rows) == 0:
        raise ValueError("no training comparisons")
    all_rows, drawn = train_rows, val_rows is None
    if val_rows is None:
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        perm = rng.permutation(train_rows)
        n_val = int(round(val_fraction * len(perm))) if len(perm) >= 20 else 0
        val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val_rows = np.asarray(val_rows, dtype=np.int64)

    pl.seed_everything(random_state, workers=True, verbose=False)
    built_here = not model.is_built
    if built_here:
        model.build_for(data, train_rows)
        model.initialize_from(data, train_rows, random_state)
    elif model.feature_dim_ != data.feature_dim:
        raise ValueError(f"model was built for {model.feature_dim_}-d features, data has {data.feature_dim}")
    closed_form = not model.has_trainable_parameters
    if closed_form:  # nothing to select: every training row counts, none is held out
        if drawn:
            train_rows = all_rows
            if built_here:
                model.build_for(data, train_rows)
        val_rows = np.empty(0, dtype=np.int64)

    selected, fixed_epochs, scout_seconds = {"kind": "val_loss"}, None, 0.0
    if selection == "new_users":
        selected, fixed_epochs, scout_seconds = _scout(
            model, built_here, data, train_rows, val_rows, random_state,
            dict(max_epochs=max_epochs, batch_size=batch_size, patience=patience, min_steps=min_steps,
                 random_state=random_state, accelerator=accelerator, devices=devices, strategy=strategy,
                 precision=precision, deterministic=deterministic, show_progress=show_progress,
                 **{k: v for k, v in trainer_kwargs.items() if k != "callbacks"}))
        pl.seed_everything(random_state, workers=True, verbose=False)  # training draws do not depend on the scout

    dm = PreferenceDataModule(data, train_rows, val_rows, model, batch_size, random_state)
    steps_per_epoch = max(1, -(-len(train_rows) // batch_size))
    epochs_for_steps = -(-min_steps // steps_per_epoch)
    wait = max(patience, model.min_patience)
    if max_epochs is None:
        max_epochs = max(DEFAULT_MAX_EPOCHS, epochs_for_steps + wait)
    if fixed_epochs is not None:  # the scout's choice: train exactly that long, keep the last weights
        max_epochs = fixed_epochs
        trainer_kwargs.setdefault("min_epochs", fixed_epochs)
    restore = None
    if trainer is None:
        callbacks = list(trainer_kwargs.pop("callbacks", []))
        if dm.val_set is not None and fixed_epochs is None:
            start = model.first_selectable_epoch()
            criterion = [selection] if isinstance(selection, NewUserLoss) else []  # before what reads it
            monitor = MONITOR if criterion else "val_loss"
            restore = RestoreBestWeights(monitor, start_epoch=start)
            trainer_kwargs.setdefault("min_epochs", min(max(start + 1, epochs_for_steps), max_epochs))
            callbacks = criterion + callbacks
            callbacks += [pl.callbacks.EarlyStopping(monitor, patience=wait, mode="min"), restore]
        if show_progress:
            callbacks.append(pl.callbacks.RichProgressBar() if _has_rich() else pl.callbacks.TQDMProgressBar())
        accelerator, devices = resolve_trainer_device(accelerator, devices)
        kwargs = dict(max_epochs=0 if closed_form else max_epochs, accelerator=accelerator, devices=devices,
                      strategy="auto" if strategy is None else strategy,
                      callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=show_progress, enable_model_summary=False,
                      deterministic=deterministic, num_sanity_val_steps=0)
        if precision is not None:
            kwargs["precision"] = precision
        kwargs.update(trainer_kwargs)
        trainer = pl.Trainer(**kwargs)
    else:
        restore = next((c for c in trainer.callbacks if isinstance(c, RestoreBestWeights)), None)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        if closed_form:
            warnings.filterwarnings("ignore", message=".*configure_optimizers. returned .None.*")
        trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start + scout_seconds
    model.eval()
    model.fit_report_ = {
        "epochs": int(trainer.current_epoch),
        "best_epoch": selected.get("best_epoch") if restore is None else restore.best_epoch,
        "min_epochs": int(trainer.min_epochs or 0),
        "max_epochs": int(max_epochs),
        "best_val_loss": None if restore is None else restore.best_score,
        "n_train": int(len(train_rows)),
        "n_train_observation_rows": int(len(dm.train_set) - dm.train_set.n_pairs),
        "n_val": int(len(val_rows)),
        "seconds": seconds,
        "device": str(trainer.strategy.root_device),
        "world_size": int(trainer.world_size),
        "encoder": encoder_spec,
        "n_long_texts": int(n_long),
        "personal_spread": None if closed_form else personal_spread(model, data, train_rows, random_state),
        "start": getattr(model, "start_", None),
        "selection": selected,
    }
    spread = model.fit_report_["personal_spread"]
    if spread is not None and spread < PERSONAL_FLOOR:
        logger.warning("%s: the personal part did not move from the population (personal_spread %.2g < %g): "
                       "every training user scores items as the population does", model.name, spread, PERSONAL_FLOOR)
    model.encoder_spec_ = encoder_spec
    logger.info("trained %s: %s", model.name, model.fit_report_)
    return model


def _scout(model: PreferenceModel, built_here: bool, data: PreferenceData, train_rows: np.ndarray,
           val_rows: np.ndarray, random_state: int, options: dict) -> tuple[dict, int | None, float]:
    """``(the report's selection, epochs to train, the scout's seconds)`` for ``selection="new_users"``
    and ``model`` as :func:`fit` has just built it: a fresh copy of ``model`` trained without the probe
    users, early-stopped on their few-shot error. ``epochs`` is None where the selection falls back
    to validation log-loss."""
    def fallback(reason: str):
        logger.info("%s: selecting epochs on validation log-loss: %s", model.name, reason)
        return {"kind": "val_loss", "requested": "new_users", "reason": reason}, None, 0.0

    if not built_here:
        return fallback("the model was fitted before (training continues)")
    if not model.has_trainable_parameters or model.user_dim == 0:
        return fallback("the model has no trained personal part")
    plan = probe_plan(data, train_rows, random_state)
    if plan is None:
        return fallback("too few users to hold out as probe users")
    scout_val = val_rows[~np.isin(data.user[val_rows], plan.users)]
    if len(scout_val) == 0:
        return fallback("no validation rows: the scout needs validation epochs")
    criterion = NewUserLoss(plan)
    scout = type(model)(model.config)
    fit(scout, data, train_rows=plan.train_rows, val_rows=scout_val, selection=criterion, **options)
    report = scout.fit_report_
    if report["best_epoch"] is None:
        return fallback("the scout recorded no criterion")
    selected = {"kind": "new_users", "probe_users": int(len(plan.users)), "probe_episodes": len(plan.episodes),
                "best_epoch": int(report["best_epoch"]), "criterion": report["best_val_loss"],
                "scout_epochs": report["epochs"], "scout_seconds": report["seconds"],
                "criterion_by_epoch": [round(v, 6) for v in criterion.history]}
    return selected, selected["best_epoch"] + 1, float(report["seconds"])


PERSONAL_FLOOR = 0.01
"""``personal_spread`` below this is reported as a personal part that did not move (a warning)."""


@torch.no_grad()
def personal_spread(model: PreferenceModel, data: PreferenceData, rows: np.ndarray, random_state: int = 0,
                    max_items: int = 256, max_users: int = 512) -> float | None:
    """How far the training users' rewards moved from the population's: over up to ``max_items``
    training items and ``max_users`` training users (seeded samples), the mean over items of the
    standard deviation over users of ``r_u(x) - r_0(x)``, divided by the standard deviation of the
    population reward ``r_0`` over the items. 0 means every user scores as the population does; None
    for a model with no user states (or fewer than two users)."""
    if model.user_dim == 0 or len(getattr(model, "user_ids_", ())) < 2 or data.item_features is None:
        return None
    rng = np.random.default_rng(random_state)
    items = data.items_of(rows)
    items = rng.choice(items, min(max_items, len(items)), replace=False)
    states = model.user_states().float()
    if states.shape[1] == 0:  # users are fitted at query time only (per_user_logistic)
        return None
    if len(states) > max_users:
        states = states[torch.as_tensor(np.sort(rng.choice(len(states), max_users, replace=False)))]
    x = torch.from_numpy(np.ascontiguousarray(data.item_features[items], dtype=np.float32)).to(model.device)
    index = model.item_index(data.item_ids[items]).to(model.device)
    users = model.reward(x, states.to(model.device), index).double()
    population = model.reward(x, model.population_state().vector.float().to(model.device)[None], index).double()[0]
    scale = float(population.std(correction=0))
    moved = float((users - population).std(dim=0, correction=0).mean())
    return moved / scale if scale > 0 else (0.0 if moved == 0 else float("inf"))


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("CI", "").lower() not in ("1", "true")
