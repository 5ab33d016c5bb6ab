"""Saving and loading fitted models as directories, never unpickling anything.

A saved model is a directory:

- ``config.json``: format version, model name, the config dataclass, feature dimension;
- ``vocab.json``: the user and item ids the model learned states and identities for;
- ``weights.safetensors``: the state dict, saved from CPU;
- ``checksums.json``: the sha256 of every file, checked on load;
- any extra files the caller adds (a run's ``run.json`` and ``split.npz``).

It is written through ``plural.training.saved_dir``: in a temporary sibling, fsynced, swapped into place,
locked against other processes, and never over a directory that is not a checkpoint. Loading
checks every file, the model name, the dimensions and the vocabulary before touching weights;
every refusal is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from plural.training import saved_dir
from plural.core.model import PreferenceModel, model_class

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS = "config.json", "vocab.json", "weights.safetensors"
FILES = (CONFIG, VOCAB, WEIGHTS)
KNOWN_NAMES = FILES + ("run.json", "split.npz")  # what saves older than checksums held (runs included)


class CheckpointError(ValueError):
    """A saved model that cannot be loaded as asked: wrong model, wrong dimensions, corrupt files."""


def is_checkpoint(path: Path) -> bool:
    """Whether the directory ``path`` holds a checkpoint's ``config.json`` (for the save guard)."""
    config = saved_dir.marker(path, CONFIG)
    return config is not None and "format_version" in config and "model" in config


def save_model(model: PreferenceModel, path: str | os.PathLike, extra: dict[str, Any] | None = None, *,
               extra_files: dict[str, bytes] | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` to the directory ``path`` (replacing an earlier checkpoint atomically).

    Args:
        model: a fitted model.
        path: target directory: new, empty, or an earlier checkpoint.
        extra: JSON-serialisable facts to keep beside the config (e.g. the data it was trained on).
        extra_files: more files to save in the same directory, ``{name: bytes}`` (checksummed too).
        overwrite: also replace a directory holding files that are not a checkpoint's (deleted).

    Raises:
        FileExistsError: ``path`` holds other files and ``overwrite`` is False.
    """
    model.check_is_fitted()
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name in FILES or name == saved_dir.CHECKSUMS or not name or "/" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": dataclasses.asdict(model.config),
        "feature_dim": model.feature_dim_,
        "n_users": len(model.user_ids_),
        "n_items": len(model.item_ids_),
        "fit_report": getattr(model, "fit_report_", None),
        "encoder": getattr(model, "encoder_spec_", None),
        "extra": extra or {},
    }
    vocab = {"user_ids": model.user_ids_, "item_ids": model.item_ids_, "context_ids": model.context_ids_,
             "user_counts": model.user_counts_, "user_contexts": model.user_contexts_,
             "observation_levels": model.observation_levels_}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    texts = {CONFIG: json.dumps(config, indent=2), VOCAB: json.dumps(vocab)}  # fail before any file is written

    def fill(tmp: Path) -> None:
        for name, text in texts.items():
            (tmp / name).write_text(text)
        save_file(state, str(tmp / WEIGHTS))
        for name, data in extra_files.items():
            (tmp / name).write_bytes(data)

    return saved_dir.write(Path(path), fill, what="a plural checkpoint", is_kind=is_checkpoint,
                           known_names=KNOWN_NAMES, overwrite=overwrite, error=CheckpointError)


def check_save_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise ``FileExistsError`` now if :func:`save_model` would refuse ``path`` (before training)."""
    saved_dir.check_target(Path(path), what="a plural checkpoint", is_kind=is_checkpoint,
                           known_names=KNOWN_NAMES, overwrite=overwrite)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is corrupt: {err}") from None


def read_config(path: str | os.PathLike) -> dict:
    """The ``config.json`` of a saved model, checked for format."""
    path = Path(path)
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a saved plural model (no config.json)")
    config = _read_json(cfg_file)
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file} is corrupt: expected a JSON object")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {version!r} is not supported (expected {FORMAT_VERSION})")
    kinds = {"model": str, "config": dict, "feature_dim": int}
    for key, kind in kinds.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise CheckpointError(f"{cfg_file} is corrupt: {key!r} must be a {kind.__name__}, "
                                  f"got {config.get(key)!r}")
    return config


def _id_list(vocab: dict, key: str, file: Path, expected: Any = None, optional: bool = False) -> list[str]:
    ids = vocab.get(key)
    if ids is None and optional:
        return []
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CheckpointError(f"{file} is corrupt: {key} must be a list of strings")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise CheckpointError(f"{file} is corrupt: {key} lists {dup!r} more than once")
    if isinstance(expected, int) and len(ids) != expected:
        raise CheckpointError(f"{file} is corrupt: {len(ids)} {key}, but {CONFIG} says {expected}")
    return ids


def _make_config(cls: type[PreferenceModel], saved: dict, path: Path):
    """The config dataclass from the saved fields; a field an older release did not save takes its
    default, with a logged note."""
    fields = {f.name: f for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(saved) - set(fields))
    if unknown:
        raise CheckpointError(f"{path / CONFIG}: config fields {unknown} are not fields of "
                              f"{cls.config_class.__name__} (saved by a newer release?)")
    for name in fields:
        if name not in saved:
            field = fields[name]
            default = (field.default if field.default is not dataclasses.MISSING
                       else field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else dataclasses.MISSING)
            if default is dataclasses.MISSING:
                raise CheckpointError(f"{path / CONFIG}: config field {name!r} is missing and has no default")
            logger.warning("%s: the saved config has no %r (an older release); using the default %r",
                           path / CONFIG, name, default)
    try:
        return cls.config_class(**saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG}: the saved config is not valid: {err}") from None


def load_model(path: str | os.PathLike, model: type[PreferenceModel] | PreferenceModel | str | None = None,
               device: str | None = None) -> PreferenceModel:
    """Load a model saved by :func:`save_model`.

    Args:
        path: the saved directory (if a crash mid-save left only its ``.old`` sibling, that is read).
        model: optionally the class (or its name, or an unfitted instance to load into) expected;
            a save of another model class, or of other dimensions, raises :class:`CheckpointError`.
        device: where to put the loaded model (default CPU).

    Raises:
        CheckpointError: missing, altered or corrupt files, or a save of another model; the
            message names the file.
    """
    with saved_dir.reading(Path(path), CONFIG, CheckpointError) as path:
        recorded = saved_dir.verify(path, CheckpointError)
        config = read_config(path)
        saved_dir.require(path, FILES, recorded, CheckpointError)
        if recorded is None:
            logger.warning("%s records no checksums (saved by an older release): its files are not verified", path)
        vocab = _read_json(path / VOCAB)
        try:
            state = load_file(str(path / WEIGHTS))
        except Exception as err:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"{path / WEIGHTS} could not be read: {err}") from None
    saved_name = config["model"]
    if isinstance(model, str):
        model = model_class(model)
    if model is not None and model.name != saved_name:
        raise CheckpointError(f"{path} holds a {saved_name!r} model, not {model.name!r}")
    try:
        cls = type(model) if isinstance(model, PreferenceModel) else (model or model_class(saved_name))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG}: unknown model {saved_name!r}: {err}") from None
    cfg = _make_config(cls, config["config"], path)
    if not isinstance(vocab, dict):
        raise CheckpointError(f"{path / VOCAB} is corrupt: expected a JSON object")
    user_ids = _id_list(vocab, "user_ids", path / VOCAB, config.get("n_users"))
    item_ids = _id_list(vocab, "item_ids", path / VOCAB, config.get("n_items"))
    context_ids = _id_list(vocab, "context_ids", path / VOCAB, optional=True)
    if isinstance(model, PreferenceModel):
        if model.is_built and model.feature_dim_ != config["feature_dim"]:
            raise CheckpointError(f"{path} was saved with {config['feature_dim']}-d features; this model "
                                  f"expects {model.feature_dim_}-d")
        instance = model
        instance.config = cfg
    else:
        instance = cls(cfg)
    try:
        instance.build(config["feature_dim"], user_ids, item_ids, context_ids, vocab.get("user_counts"),
                       vocab.get("user_contexts"), vocab.get("observation_levels", 0))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}/vocab.json does not describe this model: {err}") from None
    try:
        instance.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit a {saved_name!r} model with this config: {err}") from None
    instance.fit_report_ = config.get("fit_report")
    encoder = config.get("encoder")
    if encoder is not None and not (isinstance(encoder, dict) and isinstance(encoder.get("model"), str)):
        raise CheckpointError(f"{path}/config.json: 'encoder' is not an encoder spec: {encoder!r}")
    instance.encoder_spec_ = encoder
    instance.eval()
    return instance.to(device or "cpu")
