"""Where tensors live: the one place plural resolves a device.

Order: the ``device`` argument, then the ``PLURAL_DEVICE`` environment variable, then CUDA when
available, then CPU. Library code takes ``device=None`` and calls :func:`resolve_device` at the
edge; nothing in plural hard-codes ``"cuda"``.
"""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "PLURAL_DEVICE"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``, or None to fall
            back to ``$PLURAL_DEVICE``, then CUDA when available, then CPU.

    Returns:
        A ``torch.device``.

    Raises:
        ValueError: the string is not a device name, or it names a CUDA or MPS device this machine
            does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    source = "device argument"
    if device is None:
        env = os.environ.get(DEVICE_ENV, "").strip()
        if env:
            device, source = env, f"${DEVICE_ENV}"
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        try:
            resolved = torch.device(device.strip().lower())
        except (RuntimeError, ValueError):
            raise ValueError(f"{source}: {device!r} is not a device name; use 'cpu', 'cuda', "
                             "'cuda:N' or 'mps'") from None
    else:
        raise ValueError(f"{source} must be a string or torch.device, got {type(device).__name__}")
    _check_available(resolved, source)
    return resolved


def _check_available(device: torch.device, source: str) -> None:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{source} asks for {str(device)!r} but CUDA is not available")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{source} asks for {str(device)!r} but there are {count} CUDA "
                             "device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{source} asks for 'mps' but MPS is not available")
