"""Query-time input checked like training input: a new user's support (a comparison batch) is
validated against the model's vocabularies and feature dimension before any ``adapt`` or
``plural.personalize`` uses it, and a support too large for one query is cut to a seeded sample."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from plural.core.model import PreferenceModel

logger = logging.getLogger(__name__)

MAX_SUPPORT = 5_000
"""Most comparisons a new user's support is adapted on (:meth:`PreferenceModel.check_support`): a
larger support is cut to this many by a seeded uniform sample without replacement (a batch carries no
order to keep the most recent by), with a logged warning, so that one query never spends seconds
silently. Read at call time."""

SUPPORT_SEED = 0
"""Seed of the sample that cuts a support down to :data:`MAX_SUPPORT` (the same support always gives
the same sample)."""

_SUPPORT_INDEX_KEYS = ("item_a", "item_b", "context", "user", "level")
_SUPPORT_FEATURE_KEYS = ("features_a", "features_b")


def check_support(model: "PreferenceModel", support: dict | None) -> dict | None:
    """:meth:`plural.core.model.PreferenceModel.check_support` (see there)."""
    model.check_is_fitted()
    if support is None:
        return None
    if not isinstance(support, dict):
        raise ValueError(f"support must be a comparison batch (a dict of tensors, see "
                         f"plural.core.batch.comparison_batch), got {type(support).__name__}")
    missing = [k for k in ("label", *_SUPPORT_FEATURE_KEYS) if k not in support]
    if missing:
        raise ValueError(f"support is missing {', '.join(missing)}: a comparison batch needs label, "
                         "features_a and features_b (see plural.core.batch.comparison_batch)")
    for key in ("label", "weight", *_SUPPORT_FEATURE_KEYS, *_SUPPORT_INDEX_KEYS):
        if key in support and not isinstance(support[key], torch.Tensor):
            raise ValueError(f"support {key} must be a torch.Tensor, got {type(support[key]).__name__}")
    label = support["label"]
    if label.ndim != 1 or not label.is_floating_point():
        raise ValueError(f"support label must be a 1-d float tensor, got shape {tuple(label.shape)} "
                         f"of {label.dtype}")
    n = len(label)
    batch = dict(support)
    if "weight" not in batch:
        batch["weight"] = torch.ones(n, dtype=label.dtype, device=label.device)
    for key in ("item_a", "item_b"):
        if key not in batch:
            batch[key] = torch.full((n,), -1, dtype=torch.long, device=label.device)
    d = model.feature_dim_
    for key in _SUPPORT_FEATURE_KEYS:
        f = batch[key]
        if f.ndim != 2 or f.shape[1] != d or not f.is_floating_point():
            raise ValueError(f"{type(model).__name__} expects item features of shape (n, {d}), got "
                             f"{tuple(f.shape)} of {f.dtype} for support {key}")
    weight = batch["weight"]
    if weight.ndim != 1 or not weight.is_floating_point():
        raise ValueError(f"support weight must be a 1-d float tensor, got shape {tuple(weight.shape)} "
                         f"of {weight.dtype}")
    sizes = {"item": len(model.item_ids_), "context": len(model.context_ids_), "user": len(model.user_ids_),
             "level": max(getattr(model, "observation_levels_", 0) - 1, 0)}
    checks = []  # (key, bad-row mask, message for a bad value); tested with one device sync
    for key in ("weight", *_SUPPORT_FEATURE_KEYS, *_SUPPORT_INDEX_KEYS):
        if key not in batch:
            continue
        t = batch[key]
        if len(t) != n:
            raise ValueError(f"support {key} has {len(t)} rows but label has {n}: every tensor of a "
                             "support holds one row per comparison")
        if key in _SUPPORT_INDEX_KEYS:
            if t.ndim != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise ValueError(f"support {key} must be a 1-d integer tensor of model indices, got "
                                 f"shape {tuple(t.shape)} of {t.dtype}")
            vocab = key[:-2] if key.startswith("item_") else key
            size = sizes[vocab]
            valid = f"-1 .. {size - 1}" if size else "only -1: it has none"
            what = "thresholds (observations)" if key == "level" else f"{vocab} vocabulary"
            checks.append((key, (t < -1) | (t >= size), f"is past the model's {what} (valid: {valid})"))
    checks.append(("label", ~((label == 0) | (label == 0.5) | (label == 1)), "is not one of 0, 0.5, 1"))
    checks.append(("weight", ~torch.isfinite(weight) | (weight < 0), "must be finite and >= 0"))
    for key in _SUPPORT_FEATURE_KEYS:
        checks.append((key, ~torch.isfinite(batch[key]).all(dim=1), "holds NaN or infinite values"))
    if n:
        flags = torch.stack([mask.any() for _, mask, _ in checks]).tolist()
        for (key, mask, problem), bad in zip(checks, flags):
            if bad:
                rows = torch.nonzero(mask).squeeze(1)
                row = int(rows[0])
                value = batch[key][row]
                shown = "" if value.ndim else f" {value.item():g}"
                more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
                raise ValueError(f"support {key}{shown} at row {row} {problem}{more}")
    cap = MAX_SUPPORT
    if n > cap:
        generator = torch.Generator().manual_seed(SUPPORT_SEED)
        keep = torch.randperm(n, generator=generator)[:cap].sort().values
        logger.warning("the support holds %d comparisons, more than MAX_SUPPORT=%d: %s adapts on a "
                       "seeded uniform sample of %d of them", n, cap, type(model).__name__, cap)
        batch = {k: v[keep.to(v.device)] if isinstance(v, torch.Tensor) and v.ndim and len(v) == n else v
                 for k, v in batch.items()}
    return batch


def item_disjoint_halves(support: dict, seed: int = SUPPORT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint sets of rows of ``support`` whose items do not overlap: the support's items are
    split into two halves at random (seeded), and a comparison is in the half that holds both of
    its items; a comparison across the halves is in neither. A row standing for an observation
    (``level >= 0``) goes with its item. Items are told apart by their model index, and an item the
    model has no index for (-1) by its feature row.

    This is the bench's item-disjoint protocol inside one support: a fit on one half predicts the
    other half's comparisons on items it has not seen.

    Returns:
        ``(rows of half 0, rows of half 1)``, long tensors on the support's device, sorted.
    """
    label = support["label"]
    n = len(label)
    features = torch.cat([support["features_a"], support["features_b"]]).detach().cpu()
    index = torch.cat([support["item_a"], support["item_b"]]).detach().cpu()
    # an item's key: its index where it has one, otherwise its feature row (after every index)
    _, feature_code = torch.unique(features, dim=0, return_inverse=True)
    key = torch.where(index >= 0, index, index.max().clamp(min=0) + 1 + feature_code)
    level = support.get("level")
    if level is not None:  # the b side of an observation row is its threshold: the row follows item a
        observation = (level.detach().cpu() >= 0)
        key[n:] = torch.where(observation, key[:n], key[n:])
    items, code = torch.unique(key, return_inverse=True)
    generator = torch.Generator().manual_seed(seed)
    side = torch.randperm(len(items), generator=generator) % 2
    side_a, side_b = side[code[:n]], side[code[n:]]
    halves = tuple(torch.nonzero((side_a == h) & (side_b == h)).squeeze(1).to(label.device) for h in (0, 1))
    return halves
