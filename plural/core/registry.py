"""The model registry: models findable by name (``plural.make_model``, loading a checkpoint), the
zoo found through the ``plural.models`` entry points, so plural never imports a concrete model."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plural.core.model import ModelConfig, PreferenceModel

logger = logging.getLogger(__name__)

_REGISTRY: dict[str, type[PreferenceModel]] = {}
ENTRY_POINT_GROUP = "plural.models"


def register_model(cls: type[PreferenceModel]) -> type[PreferenceModel]:
    """Class decorator: make a model findable by its ``name`` (``plural.make_model``, loading)."""
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Load the models installed under the ``plural.models`` entry-point group (the zoo in
    ``user_models`` registers itself there, so plural never imports a concrete model by name)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            try:
                cls = ep.load()
            except ImportError as err:
                logger.warning("could not load model %r: %s", ep.name, err)
                continue
            _REGISTRY.setdefault(ep.name, cls)


def available_models(ordered: bool = False) -> list[str]:
    """Names of every model that can be made: sorted by name, or with ``ordered`` by their classes'
    :attr:`~PreferenceModel.listing_order` (then by name), the order of the benchmark's tables."""
    _discover()
    if ordered:
        return sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].listing_order, name))
    return sorted(_REGISTRY)


def model_class(name: str) -> type[PreferenceModel]:
    if name not in _REGISTRY:
        _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}") from None


def make_model(name: str, config: ModelConfig | None = None, **overrides: Any) -> PreferenceModel:
    """A new, unfitted model by name, e.g. ``make_model("bradley_terry", hidden_dim=64)``."""
    return model_class(name)(config, **overrides)
