"""The Bradley-Terry preference likelihood, written once for every model.

With reward margin ``m = r(a) - r(b)``, Bradley-Terry gives ``P(a preferred) = sigmoid(m)``. With a
label-noise rate ``eps`` (the chance that a label was flipped at random), the probability of the
observed label becomes ``eps + (1 - 2 eps) * sigmoid(m)``. Ties (label 0.5) are scored as a soft target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_probability(margin: torch.Tensor, noise_rate: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``P(a preferred over b)`` for reward margins ``(n,)`` under label noise ``noise_rate``."""
    p = torch.sigmoid(margin)
    if isinstance(noise_rate, torch.Tensor) or noise_rate > 0:
        p = noise_rate + (1 - 2 * noise_rate) * p
    return p


def bradley_terry_nll(
    margin: torch.Tensor,
    label: torch.Tensor,
    weight: torch.Tensor | None = None,
    noise_rate: float | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Negative log-likelihood of labels under Bradley-Terry with optional label noise.

    Args:
        margin: ``(n,)`` reward differences ``r(a) - r(b)``.
        label: ``(n,)`` targets in {0, 0.5, 1}; 1 means a preferred.
        weight: ``(n,)`` non-negative comparison weights, or None for all ones.
        noise_rate: probability that a label is flipped, in [0, 0.5).
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"``.

    Returns:
        The loss, a scalar unless ``reduction="none"``.
    """
    label = label.to(margin.dtype)
    if isinstance(noise_rate, torch.Tensor) or noise_rate > 0:
        p = preference_probability(margin, noise_rate).clamp(1e-7, 1 - 1e-7)
        loss = -(label * torch.log(p) + (1 - label) * torch.log1p(-p))
    else:  # numerically exact path through the logits
        loss = F.binary_cross_entropy_with_logits(margin, label, reduction="none")
    if weight is not None:
        loss = loss * weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        denom = weight.sum().clamp_min(1e-12) if weight is not None else loss.new_tensor(len(loss))
        return loss.sum() / denom
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
