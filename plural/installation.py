"""Checks of the installed distributions that imports alone cannot make.

``faiss-cpu`` (a dependency of plural) and ``faiss-gpu-cu12`` (the GPU build) both install the
same ``faiss`` module. pip lets both be installed at once, the files of whichever was installed
last win, and uninstalling either deletes files the other needs. :func:`check_faiss_distributions`
finds that state and says how to leave it; call it right before ``import faiss``.

The one supported GPU route (see the comments in ``pyproject.toml``)::

    pip install plural                       # brings faiss-cpu
    pip uninstall -y faiss-cpu
    pip install faiss-gpu-cu12               # or: make gpu-faiss, in a checkout
"""

from __future__ import annotations

import functools
from importlib import metadata

__all__ = ["FAISS_DISTRIBUTIONS", "FAISS_GPU_ROUTE", "FaissInstallError", "check_faiss_distributions",
           "installed_faiss_distributions"]

FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cuvs")
"""PyPI distributions that each install the ``faiss`` module."""

FAISS_GPU_ROUTE = "pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"
"""How to put FAISS on the GPU: replace faiss-cpu (plural's dependency) with the GPU build."""


class FaissInstallError(ImportError):
    """More than one FAISS distribution is installed: ``import faiss`` would load an unknown mix."""


@functools.lru_cache(maxsize=None)
def installed_faiss_distributions() -> tuple[tuple[str, str], ...]:
    """``((name, version), ...)`` of the installed distributions of :data:`FAISS_DISTRIBUTIONS`,
    in that order (read once per process from the installed metadata)."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return tuple(found)


def check_faiss_distributions(installed: tuple[tuple[str, str], ...] | None = None) -> None:
    """Raise :class:`FaissInstallError` (an ``ImportError``) if two or more FAISS distributions are
    installed, naming them and the commands that leave exactly one.

    Args:
        installed: ``((name, version), ...)``; by default :func:`installed_faiss_distributions`.
    """
    installed = installed_faiss_distributions() if installed is None else installed
    if len(installed) < 2:
        return
    names = [name for name, _ in installed]
    shown = ", ".join(f"{name} {version}" for name, version in installed)
    keep = next((n for n in names if n != "faiss-cpu"), names[-1])
    raise FaissInstallError(
        f"{shown} are all installed, and each installs the same `faiss` module, so the files of "
        f"whichever came last are loaded and removing one breaks the other. Keep one: for the GPU, "
        f"pip uninstall -y {' '.join(names)} && pip install {keep}; for the CPU, "
        f"pip uninstall -y {' '.join(names)} && pip install faiss-cpu")
