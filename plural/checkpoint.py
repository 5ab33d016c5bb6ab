"""Saving and loading fitted models as directories, never unpickling anything.

A saved model is a directory:

- ``config.json``: format version, model name, the config dataclass, feature dimension;
- ``vocab.json``: the user and item ids the model learned states and identities for;
- ``weights.safetensors``: the state dict, saved from CPU.

The directory is written beside its target and renamed into place, so a crash mid-save leaves the
previous save intact. Loading checks the model name and dimensions before touching weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from plural.model import PreferenceModel, model_class

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A saved model that cannot be loaded as asked: wrong model, wrong dimensions, corrupt files."""


def save_model(model: PreferenceModel, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the directory ``path`` (replacing an earlier save atomically).

    Args:
        model: a fitted model.
        path: target directory.
        extra: JSON-serialisable facts to keep beside the config (e.g. the data it was trained on).
    """
    model.check_is_fitted()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        config = {
            "format_version": FORMAT_VERSION,
            "model": model.name,
            "config": _jsonable(model.config),
            "feature_dim": model.feature_dim_,
            "n_users": len(model.user_ids_),
            "n_items": len(model.item_ids_),
            "fit_report": getattr(model, "fit_report_", None),
            "extra": extra or {},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "vocab.json").write_text(json.dumps({"user_ids": model.user_ids_, "item_ids": model.item_ids_,
                                                      "context_ids": model.context_ids_,
                                                      "user_counts": model.user_counts_,
                                                      "user_contexts": model.user_contexts_}))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "weights.safetensors"))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a saved model, checked for format."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a saved plural model (no config.json)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file} is corrupt: {err}") from None
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r} is not supported (expected {FORMAT_VERSION})")
    return config


def load_model(path: str | os.PathLike, model: type[PreferenceModel] | PreferenceModel | str | None = None,
               device: str | None = None) -> PreferenceModel:
    """Load a model saved by :func:`save_model`.

    Args:
        path: the saved directory.
        model: optionally the class (or its name, or an unfitted instance to load into) expected;
            a save of another model class, or of other dimensions, raises :class:`CheckpointError`.
        device: where to put the loaded model (default CPU).
    """
    path = Path(path)
    config = read_config(path)
    saved_name = config["model"]
    if isinstance(model, str):
        model = model_class(model)
    if model is not None:
        expected = model.name
        if expected != saved_name:
            raise CheckpointError(f"{path} holds a {saved_name!r} model, not {expected!r}")
    cls = type(model) if isinstance(model, PreferenceModel) else (model or model_class(saved_name))
    cfg = cls.config_class(**config["config"])
    if isinstance(model, PreferenceModel):
        if model.is_built and model.feature_dim_ != config["feature_dim"]:
            raise CheckpointError(f"{path} was saved with {config['feature_dim']}-d features; this model "
                                  f"expects {model.feature_dim_}-d")
        instance = model
        instance.config = cfg
    else:
        instance = cls(cfg)
    vocab = json.loads((path / "vocab.json").read_text())
    try:
        instance.build(config["feature_dim"], vocab["user_ids"], vocab["item_ids"], vocab.get("context_ids", ()),
                       vocab.get("user_counts"), vocab.get("user_contexts"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}/vocab.json does not describe this model: {err}") from None
    try:
        state = load_file(str(path / "weights.safetensors"))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}/weights.safetensors could not be read: {err}") from None
    try:
        instance.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {saved_name!r} model with this config: {err}") from None
    instance.fit_report_ = config.get("fit_report")
    instance.eval()
    return instance.to(device or "cpu")


def _jsonable(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)
