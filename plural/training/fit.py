"""Training: a LightningDataModule over comparisons and :func:`fit`, which wires ``pl.Trainer``.

CPU by default, the GPU when one is present (``accelerator="auto"``), early stopping on validation
log-loss with the best weights restored, seeded. Trainer options (``devices``, ``strategy``,
``precision``, ...) pass through, so the same call runs on Lightning's DDP.
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
from plural.data.container import PreferenceData
from plural.core.model import PreferenceModel

logger = logging.getLogger(__name__)


class PreferenceDataModule(pl.LightningDataModule):
    """Train and validation comparisons of one ``PreferenceData`` as batches for ``model``."""

    def __init__(self, data: PreferenceData, train_rows: np.ndarray, val_rows: np.ndarray | None,
                 model: PreferenceModel, batch_size: int = 256, random_state: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.train_set = ComparisonDataset(data, train_rows, model)
        self.val_set = None if val_rows is None or len(val_rows) == 0 else \
            ComparisonDataset(data, val_rows, model)
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


def fit(
    model: PreferenceModel,
    data: PreferenceData,
    *,
    train_rows: np.ndarray | None = None,
    val_rows: np.ndarray | None = None,
    val_fraction: float = 0.1,
    encoder=None,
    max_epochs: int = 30,
    batch_size: int = 256,
    patience: int = 3,
    random_state: int = 0,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    precision: str | int | None = None,
    show_progress: bool = True,
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
        max_epochs, batch_size, patience: the usual; ``patience`` epochs without improvement of
            validation log-loss stop training (at least ``model.min_patience``), and the best
            weights are restored.
        random_state: seeds weights, shuffling and the validation draw.
        accelerator, devices, strategy, precision, **trainer_kwargs: passed to ``pl.Trainer``
            (e.g. ``strategy="ddp", devices=2``).

    Returns:
        ``model``, trained; ``model.fit_report_`` holds epochs, best validation loss and seconds.
    """
    if not isinstance(data, PreferenceData):
        raise TypeError(f"data must be a PreferenceData, got {type(data).__name__}")
    from plural.data.encoders import ensure_features

    data = ensure_features(data, encoder)
    rng = np.random.default_rng(random_state)
    train_rows = np.arange(len(data)) if train_rows is None else np.asarray(train_rows, dtype=np.int64)
    if len(train_rows) == 0:
        raise ValueError("no training comparisons")
    if val_rows is None:
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        perm = rng.permutation(train_rows)
        n_val = int(round(val_fraction * len(perm))) if len(perm) >= 20 else 0
        val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val_rows = np.asarray(val_rows, dtype=np.int64)

    pl.seed_everything(random_state, workers=True, verbose=False)
    if not model.is_built:
        model.build_for(data, train_rows)
    elif model.feature_dim_ != data.feature_dim:
        raise ValueError(f"model was built for {model.feature_dim_}-d features, data has {data.feature_dim}")

    dm = PreferenceDataModule(data, train_rows, val_rows, model, batch_size, random_state)
    callbacks = list(trainer_kwargs.pop("callbacks", []))
    restore = None
    if dm.val_set is not None:
        start = model.first_selectable_epoch()
        restore = RestoreBestWeights("val_loss", start_epoch=start)
        trainer_kwargs.setdefault("min_epochs", min(start + 1, max_epochs))
        wait = max(patience, model.min_patience)
        callbacks += [pl.callbacks.EarlyStopping("val_loss", patience=wait, mode="min"), restore]
    if show_progress:
        callbacks.append(pl.callbacks.RichProgressBar() if _has_rich() else pl.callbacks.TQDMProgressBar())
    kwargs = dict(max_epochs=max_epochs, accelerator=accelerator, devices=devices, strategy=strategy,
                  callbacks=callbacks, logger=False, enable_checkpointing=False,
                  enable_progress_bar=show_progress, enable_model_summary=False,
                  deterministic=True, num_sanity_val_steps=0)
    if precision is not None:
        kwargs["precision"] = precision
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(**kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    model.eval()
    model.on_fit_complete()
    model.fit_report_ = {
        "epochs": int(trainer.current_epoch),
        "best_epoch": None if restore is None else restore.best_epoch,
        "best_val_loss": None if restore is None else restore.best_score,
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "seconds": seconds,
        "device": str(trainer.strategy.root_device),
        "world_size": int(trainer.world_size),
    }
    logger.info("trained %s: %s", model.name, model.fit_report_)
    return model


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("CI", "").lower() not in ("1", "true")
