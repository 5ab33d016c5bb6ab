"""A run: train a model on a split of a dataset, save it with its split, evaluate it later.

A run directory holds the saved model (``plural.training.checkpoint``), ``run.json`` (dataset, seeds, split
sizes, training report) and ``split.npz`` (the comparison rows of every part, loaded with
``allow_pickle=False``), so ``evaluate_run`` scores exactly the comparisons held out at training time.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from plural.core.model import make_model, model_class
from plural.data.container import PreferenceData
from plural.data.splits import MODES
from plural.evaluation.metrics import evaluate
from plural.evaluation.protocol import default_split_mode, protocol_split
from plural.training.checkpoint import CheckpointError, check_save_target, load_model, save_model

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
SPLIT_FILE = "split.npz"


__all__ = ["default_split_mode", "evaluate_run", "load_dataset", "personalization_run", "train_run"]


def load_dataset(name_or_path: str, **options) -> PreferenceData:
    """A bundled dataset by name (``options`` go to :func:`plural.data.bundled.load`), or a user's
    file (any format ``plural.data`` reads; ``options`` are ``kind`` and the converter's column
    options, as :func:`plural.data.converters.from_file` takes them)."""
    from plural.data.bundled import DATASETS, load

    if name_or_path in DATASETS:
        return load(name_or_path, **options)
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(f"{name_or_path!r} is neither a bundled dataset ({', '.join(DATASETS)}) nor a file")
    from plural.data.converters import from_file

    return from_file(path, **options)


def _is_bundled(name: str) -> bool:
    from plural.data.bundled import DATASETS

    return name in DATASETS


def _how_to_read(dataset: str, read_options: dict) -> tuple[str | None, dict]:
    """``(dataset_path, read_options)`` as a run records them: a file's absolute path and its read
    options with an ``item_table`` path made absolute too, so ``evaluate_run`` reads the same data
    from any working directory. A bundled dataset has no path."""
    if _is_bundled(dataset):
        return None, {}
    options = dict(read_options)
    table = options.get("item_table")
    if isinstance(table, (str, os.PathLike)):
        options["item_table"] = str(Path(table).resolve())
    elif table is not None:
        raise ValueError("a run can only record item_table as a path (a frame cannot be read again)")
    return str(Path(dataset).resolve()), options


def train_run(dataset: str, model_name: str, out: str | os.PathLike, *, random_state: int = 0,
              unseen_fraction: float = 0.2, split_mode: str | None = None, max_epochs: int | None = None,
              batch_size: int = 256, show_progress: bool = True, encoder=None,
              model_options: dict | None = None, overwrite: bool = False, read_options: dict | None = None,
              prompts: bool = False, **fit_options) -> dict:
    """Load ``dataset``, split users and comparisons (:func:`plural.evaluation.protocol.protocol_split`),
    fit ``model_name`` on the seen users' training comparisons, and save model, split and report to
    ``out`` (one checkpoint directory, written atomically; ``out`` must be new, empty or an earlier
    run unless ``overwrite``). Returns the run record.

    ``dataset`` is a bundled name or a file path; ``read_options`` (``kind`` and the converter's
    column options, e.g. ``{"kind": "trl", "user_id": "annotator"}``) say how to read a file, and
    are recorded with its absolute path so :func:`evaluate_run` reads it again. ``split_mode``
    (``"items"`` or ``"comparisons"``) overrides the dataset's own (``default_split_mode``).
    ``prompts=True`` trains on prompt-aware items (:func:`plural.data.prompts.with_prompts`: one item
    per prompt and response, the contexts' texts as prompts); the checkpoint's encoder spec says so,
    and :func:`evaluate_run` builds the same items again. ``max_epochs`` None is ``plural.fit``'s
    default. The model name, split mode and output directory are checked before the data is loaded."""
    check_save_target(out, overwrite)  # refuse a directory of someone else's files before training
    model_class(model_name)  # an unknown model fails now, not after loading and encoding the data
    if split_mode is not None and split_mode not in MODES:
        raise ValueError(f"split mode must be one of {MODES}, got {split_mode!r}")
    read_options = dict(read_options or {})
    if read_options and _is_bundled(dataset):
        raise ValueError(f"{dataset!r} is a bundled dataset: read options ({', '.join(read_options)}) "
                         f"apply to a file only")
    dataset_path, recorded_options = _how_to_read(dataset, read_options)
    data = load_dataset(dataset, **read_options)
    if prompts:
        from plural.data.prompts import with_prompts

        data = with_prompts(data, encoder)
    protocol = protocol_split(data, random_state, unseen_fraction=unseen_fraction, mode=split_mode)
    seen, unseen, split, mode = protocol.seen, protocol.unseen, protocol.split, protocol.mode
    model = make_model(model_name, **(model_options or {}))
    model.fit(data, train_rows=split.train, val_rows=split.val, max_epochs=max_epochs,
              batch_size=batch_size, random_state=random_state, show_progress=show_progress,
              encoder=encoder, **fit_options)
    out = Path(out)
    record = {
        "dataset": dataset, "model": model_name, "random_state": random_state,
        "unseen_fraction": unseen_fraction, "split_mode": mode,
        "dataset_path": dataset_path, "read_options": recorded_options, "prompts": bool(prompts),
        "n_comparisons": int(len(data)),
        "n_seen_users": int(len(seen)), "n_unseen_users": int(len(unseen)),
        "n_train": int(len(split.train)), "n_val": int(len(split.val)), "n_test": int(len(split.test)),
        "n_dropped_by_split": split.n_dropped, "data": repr(data), "data_meta": _jsonable(data.meta),
        "fit_report": model.fit_report_,
    }
    buffer = io.BytesIO()
    np.savez(buffer, train=split.train, val=split.val, test=split.test, seen_users=seen, unseen_users=unseen)
    save_model(model, out, extra={"dataset": dataset}, overwrite=overwrite,
               extra_files={SPLIT_FILE: buffer.getvalue(), RUN_FILE: json.dumps(record, indent=2).encode()})
    return record


def evaluate_run(run_dir: str | os.PathLike, encoder=None) -> dict:
    """Score a saved run on its held-out comparisons: seen users' test comparisons, and every
    comparison of the unseen users with no adaptation (the population reward, k=0)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a plural run (no {RUN_FILE}); train one with `plural train`")
    model = load_model(run_dir)  # checks every file of the run, run.json and split.npz included
    try:
        record = json.loads((run_dir / RUN_FILE).read_text())
        dataset = record["dataset"]
        read_options = dict(record.get("read_options") or {})  # runs before read options: none
        source = record.get("dataset_path") or dataset
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{run_dir / RUN_FILE} is corrupt: {type(err).__name__}: {err}") from None
    if record.get("model") != model.name:
        raise CheckpointError(f"{run_dir / RUN_FILE} names model {record.get('model')!r}, but the checkpoint "
                              f"holds {model.name!r}")
    from plural.data.prompts import embed_as_trained

    if not _is_bundled(source) and not Path(source).exists():
        raise ValueError(f"{run_dir}: the run was trained on the file {source}, which is not there now")
    # texts (and responses in context) embedded as at training time; a different encoder is an error
    data, _ = embed_as_trained(load_dataset(source, **read_options), getattr(model, "encoder_spec_", None), encoder)
    with np.load(run_dir / SPLIT_FILE, allow_pickle=False) as split:
        test, unseen = split["test"], split["unseen_users"]
    expected = record.get("n_comparisons")
    if (len(test) and test.max() >= len(data)) or (expected is not None and expected != len(data)):
        raise ValueError(f"{run_dir}: the saved split does not fit the dataset {record['dataset']!r} as loaded now"
                         + (f" ({len(data)} comparisons, {expected} at training time)" if expected is not None else ""))
    results = {"seen_test": evaluate(model, data, test)}
    unseen_rows = np.flatnonzero(np.isin(data.user, unseen))
    if len(unseen_rows):
        results["unseen_k0"] = evaluate(model, data, unseen_rows)
    return {"run": record, "results": results}


def personalization_run(dataset: str, model_name: str, *, ks: tuple[int, ...] = (0, 10),
                        random_state: int = 0, max_epochs: int = 10, batch_size: int = 512,
                        max_unseen_users: int | None = 200, show_progress: bool = True,
                        model_options: dict | None = None, **fit_options) -> dict:
    """Fit ``model_name`` on the seen users of ``dataset`` and measure, for unseen users, query
    accuracy after k of their comparisons (the protocol's split, :func:`protocol_split`, with at most
    ``max_unseen_users`` scored; item-disjoint support and query unless the dataset is split by
    comparison, ``docs/protocol.md``)."""
    from plural.data.encoders import ensure_features
    from plural.data.splits import make_episodes
    from plural.evaluation.fewshot import few_shot_curve

    model_class(model_name)  # fail before loading and encoding the data
    data = ensure_features(load_dataset(dataset))
    protocol = protocol_split(data, random_state, max_unseen_users=max_unseen_users)
    split, mode = protocol.split, protocol.mode
    model = make_model(model_name, **(model_options or {}))
    model.fit(data, train_rows=split.train, val_rows=split.val, max_epochs=max_epochs, batch_size=batch_size,
              random_state=random_state, show_progress=show_progress, **fit_options)
    episodes = make_episodes(data, protocol.scored, mode=mode, n_draws=1, random_state=random_state)
    curve = few_shot_curve(model, data, episodes, ks)
    out = {"dataset": dataset, "model": model, "data": data, "split_mode": mode, "curve": curve,
           "episodes": episodes, "seen_test": evaluate(model, data, split.test), "fit_report": model.fit_report_}
    from plural.query.personalize import build_user_store, personalize_fn, supports_retrieval

    if supports_retrieval(model):
        out["store"] = build_user_store(model)
        out["curve_store"] = few_shot_curve(model, data, episodes, ks, adapt_fn=personalize_fn(out["store"]))
    return out


def _jsonable(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
