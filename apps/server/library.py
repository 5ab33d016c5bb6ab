"""Every call the service makes into plural, in one place.

The service uses only the public library API. Three pieces it needed were added to the library for it
(see the report of issue 14); the calls to them are here and nowhere else:

(a) ``UserStore.add/update/upsert(..., covariances=None)`` and ``UserStore.get_covariance(ids)``
    (a per-user ``(d, d)`` covariance kept with the vector and saved with the store). Landed in
    commit 31fac93: :func:`upsert_state` and :func:`stored_state` use them.
(b) ``ItemIndex.save(dir)`` / ``ItemIndex.load(dir, model, store=None)``: :func:`item_index`
    loads the index from ``<state_dir>/item_index`` instead of rebuilding it on every start.
    Landed in cc5bf40.
(c) ``ItemIndex(model, items, store=store)``, whose ``top_n/rank/score`` accept a user id held by
    the store but not in the training vocabulary, read from the store first (so a training user's
    *current* vector, not the one in the model's weights, ranks their items). Landed in cc5bf40:
    :func:`item_index` and :func:`user_for_index`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TEXT_PREFIX = "\x00text:"
"""Prefix of the item ids given to texts inside a support (never a catalog id: ids from requests
and catalogs read from files cannot hold NUL)."""


def text_key(text: str, prompt: str | None = None) -> str:
    """The support's item id of ``text`` (judged under ``prompt``, for a prompt-aware run: the same
    response under two prompts is two items with different features)."""
    import hashlib

    if prompt is None:
        return TEXT_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()
    return TEXT_PREFIX + hashlib.sha256(b"prompt\x00" + prompt.encode("utf-8") + b"\x00"
                                        + text.encode("utf-8")).hexdigest()


@dataclass
class Run:
    """A run written by ``plural train``, loaded for serving."""

    run_dir: Path
    record: dict
    model: Any
    data: Any  # plural.PreferenceData with item features: the catalog and the training comparisons
    texts_supported: bool
    fingerprint: str
    train_rows: dict[str, np.ndarray] = field(default_factory=dict)  # user id -> rows of data
    encoder: Any = None
    prompt_aware: bool = False  # the model scores responses under prompts (plural.data.prompts)

    @property
    def has_user_vectors(self) -> bool:
        return int(getattr(self.model, "user_dim", 0) or 0) > 0


def is_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "run.json").is_file()


def load_run(run_dir: str | os.PathLike) -> Run:
    """Load the model (``plural.load_model``, which verifies every file of the run), the dataset the
    run recorded (``plural.training.runs.load_dataset``, with its read options) and its features
    (``ensure_features``: text items are embedded with the encoder the model was trained with, as its
    checkpoint records it, or the default ``TextEncoder`` for a checkpoint that records none).

    A prompt-aware run (``plural.data.prompts.is_prompt_aware(model.encoder_spec_)``, trained with
    ``plural train --prompts``) gets the catalog it was trained on: ``with_prompts(raw, encoder)``
    with the model's own encoder, one item per (prompt, response) its comparisons use, whose ids
    are ``context_id + "\\x1f" + item_id`` (the bare item id for a comparison without a context)
    and whose features are ``[response, prompt, response * prompt]`` (as
    ``plural.training.runs.evaluate_run`` rebuilds them).

    Texts sent to the service can be scored only when the catalog's features *are* text
    embeddings: the dataset had item texts and no features of its own (a prompt-aware run: item
    texts; its features are always built from the texts).
    """
    import plural
    from plural.data.prompts import embed_as_trained, is_prompt_aware
    from plural.training.runs import load_dataset

    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a plural run (no run.json); train one with `plural train`")
    model = plural.load_model(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    source = record.get("dataset_path") or record["dataset"]
    options = dict(record.get("read_options") or {})
    if record.get("dataset_path") and not Path(source).exists():
        raise FileNotFoundError(f"{run_dir}: the run was trained on the file {source}, which is not there now")
    raw = load_dataset(source, **options)
    spec = getattr(model, "encoder_spec_", None)
    prompt_aware = is_prompt_aware(spec)
    data, encoder = embed_as_trained(raw, spec)  # responses in context for a prompt-aware run
    texts_supported = encoder is not None and raw.item_text is not None
    if data.feature_dim != model.feature_dim_:
        raise ValueError(f"{run_dir}: the catalog's features are {data.feature_dim}-d but the model expects "
                         f"{model.feature_dim_}-d (was it trained with another encoder?)")
    expected = record.get("n_comparisons")
    if expected is not None and expected != len(data):
        raise ValueError(f"{run_dir}: the dataset has {len(data)} comparisons now, {expected} at training time")
    with np.load(run_dir / "split.npz", allow_pickle=False) as split:
        train = np.asarray(split["train"], dtype=np.int64)
    train_rows: dict[str, np.ndarray] = {}
    if len(train):
        users = data.user[train]
        order = np.argsort(users, kind="stable")
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        for chunk in np.split(train[order], bounds):
            train_rows[str(data.user_ids[data.user[chunk[0]]])] = np.sort(chunk)
    return Run(run_dir=run_dir, record=record, model=model, data=data, texts_supported=texts_supported,
               fingerprint=plural.model_fingerprint(model), train_rows=train_rows, encoder=encoder,
               prompt_aware=prompt_aware)


def run_from_parts(model, data, *, texts_supported: bool = False, encoder=None, run_dir: Path | None = None) -> Run:
    """A :class:`Run` from a fitted model and its catalog (for tests and embedding the service);
    prompt-aware when the model's encoder spec says so (``data`` is then ``with_prompts`` items)."""
    import plural
    from plural.data.prompts import is_prompt_aware

    return Run(run_dir=run_dir or Path("."), record={"model": model.name, "dataset": data.name}, model=model,
               data=data, texts_supported=texts_supported, fingerprint=plural.model_fingerprint(model),
               encoder=encoder, prompt_aware=is_prompt_aware(getattr(model, "encoder_spec_", None)))


def limit_threads() -> None:
    """One intra-op thread: the service runs many tiny tensor ops concurrently, where torch's own
    thread pool only adds contention."""
    import torch

    torch.set_num_threads(1)


# ---------------------------------------------------------------------- the user store
def new_store(model):
    """A store of the model's training users (``plural.build_user_store``), or None for a model
    without user vectors."""
    import plural

    if int(getattr(model, "user_dim", 0) or 0) == 0:
        return None
    return plural.build_user_store(model)


def load_store(path: Path, model):
    """``plural.UserStore.load(path, model=model)``: refuses a store of another model."""
    import plural

    return plural.UserStore.load(path, model=model)


def save_store(store, path: Path) -> None:
    store.save(path)


def upsert_state(store, user_id: str, state, metadata: dict) -> None:
    """Write a user's vector, covariance (library piece (a)) and metadata, all or nothing."""
    vector = state.vector.detach().float().cpu().numpy()[None]
    cov = None if state.covariance is None else state.covariance.detach().float().cpu().numpy()[None]
    store.upsert([user_id], vector, [metadata], covariances=cov)


def stored_state(store, user_id: str):
    """The user's :class:`plural.UserState` from the store (vector and, where kept, covariance).

    Raises:
        KeyError: the user is not stored.
    """
    import torch
    import plural

    vector = store.get([user_id])[0]
    cov = store.get_covariance([user_id])[0]
    return plural.UserState(vector=torch.from_numpy(np.array(vector, dtype=np.float32)),
                            covariance=None if cov is None else torch.from_numpy(np.array(cov, dtype=np.float32)),
                            user_id=user_id)


def store_metadata(store, user_id: str) -> dict:
    return store.metadata(user_id)


def store_vectors(store) -> tuple[list[str], np.ndarray]:
    ids = store.user_ids
    return ids, (store.get(ids) if ids else np.zeros((0, store.dim), np.float32))


def population_state(model):
    return model.population_state()


# ---------------------------------------------------------------------- personalizing
def support_batch(run: Run, user_id: str, keys_a: Sequence[str], keys_b: Sequence[str], labels: Sequence[float],
                  weights: Sequence[float], contexts: Sequence[str | None], features: dict[str, np.ndarray]):
    """One user's comparisons as a model batch: the batch ``plural.comparison_batch`` makes of
    ``plural.PreferenceData.from_records`` of them (:func:`support_batch_from_records`, which
    ``tests/apps/server`` compares it with), built from the catalog's rows directly (that pair of
    calls validates and re-indexes a new dataset per write: half of a write's cost on the CPU).
    ``keys`` are catalog item ids or :func:`text_key` of texts; catalog items keep their learned
    identities (the model's index) and texts are new items (index -1) known by their features
    (``features``). Labels and weights were validated by the request's schema; the model checks
    the batch again (``check_support``) in ``plural.personalize``."""
    import torch

    model = run.model
    row_of = catalog_rows(run)
    catalog = run.data.item_features
    for row, (a, b) in enumerate(zip(keys_a, keys_b)):
        if a == b:  # as from_records (the request's schema refuses it first)
            raise ValueError(f"row {row}: item {a!r} is compared with itself")

    model_rows = _model_item_rows(run)

    def side(keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.fromiter((row_of.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        if (rows >= 0).all():
            table = catalog[rows]
            index = model_rows[rows]
        else:  # texts: new items, known by their features only
            table = np.stack([features[k] if r < 0 else catalog[r] for k, r in zip(keys, rows.tolist())])
            index = np.where(rows >= 0, model_rows[np.maximum(rows, 0)], -1)
        return (torch.from_numpy(np.ascontiguousarray(index, dtype=np.int64)),
                torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))

    item_a, features_a = side(keys_a)
    item_b, features_b = side(keys_b)
    n = len(labels)
    if any(c is not None for c in contexts):
        known = model.context_index([c for c in contexts if c is not None]).tolist()
        it = iter(known)
        context = torch.tensor([-1 if c is None else next(it) for c in contexts], dtype=torch.long)
    else:
        context = torch.full((n,), -1, dtype=torch.long)
    return {"user": model.user_index([user_id]).expand(n).clone(), "item_a": item_a, "item_b": item_b,
            "label": torch.from_numpy(np.asarray(labels, dtype=np.float64).astype(np.float32)),
            "weight": torch.from_numpy(np.asarray(weights, dtype=np.float32)),
            "context": context, "features_a": features_a, "features_b": features_b}


def _model_item_rows(run: Run) -> np.ndarray:
    """The model's index (``model.item_index``) of every catalog row, computed once per run."""
    rows = getattr(run, "_model_item_rows", None)
    if rows is None:
        rows = run.model.item_index([str(i) for i in run.data.item_ids]).numpy().astype(np.int64)
        object.__setattr__(run, "_model_item_rows", rows)
    return rows


def support_batch_from_records(run: Run, user_id: str, keys_a: Sequence[str], keys_b: Sequence[str],
                               labels: Sequence[float], weights: Sequence[float], contexts: Sequence[str | None],
                               features: dict[str, np.ndarray]):
    """:func:`support_batch` through the public API: ``plural.PreferenceData.from_records`` (the
    item table holds only the items compared, with their features) and ``plural.comparison_batch``."""
    import plural

    used = list(dict.fromkeys(list(keys_a) + list(keys_b)))
    row_of = catalog_rows(run)
    table = np.stack([features[k] if k in features else run.data.item_features[row_of[k]] for k in used])
    data = plural.PreferenceData.from_records(
        [user_id] * len(labels), list(keys_a), list(keys_b), np.asarray(labels, np.float64), item_ids=used,
        item_features=table, weights=np.asarray(weights, np.float32),
        contexts=list(contexts) if any(c is not None for c in contexts) else None, name=f"user {user_id}")
    return plural.comparison_batch(data, None, run.model)


def personalize(run: Run, store, support):
    """``plural.personalize(model, store, support, check_fingerprint=False)``: the user's state from
    their whole history, with the stored users as the prior. The store's fingerprint is not
    checked on every write (it hashes the model's weights): the service's store is built from
    this model (:func:`new_store`) or loaded with ``UserStore.load(path, model=model)``
    (:func:`load_store`), which refuses a store of another model."""
    import plural

    return plural.personalize(run.model, store, support, check_fingerprint=False)


def training_support_rows(run: Run, user_id: str) -> np.ndarray:
    """Rows of ``run.data`` the model was trained on for ``user_id`` (empty for other users)."""
    return run.train_rows.get(user_id, np.zeros(0, dtype=np.int64))


def catalog_rows(run: Run) -> dict[str, int]:
    rows = getattr(run, "_row_of", None)
    if rows is None:
        rows = {str(i): r for r, i in enumerate(run.data.item_ids)}
        object.__setattr__(run, "_row_of", rows)
    return rows


# ---------------------------------------------------------------------- scoring
def item_index(run: Run, cache_dir: Path | None = None, store=None):
    """The catalog's ``plural.ItemIndex`` over the user store (piece (c): ``ItemIndex(model, items,
    store=store)`` looks a user id up in the store first). Loaded from ``cache_dir`` with
    ``ItemIndex.load(dir, model, store=store)`` (piece (b); refused for another model) when it holds
    this catalog's ids, else built and saved there with ``ItemIndex.save(dir)``."""
    import plural

    cls = plural.ItemIndex
    ids = [str(i) for i in run.data.item_ids]
    if cache_dir is not None and Path(cache_dir).exists():
        try:
            index = cls.load(cache_dir, run.model, store=store)
            if [str(i) for i in index.item_ids] == ids:
                return index
            logger.warning("item index at %s holds another catalog; rebuilding it", cache_dir)
        except Exception as err:  # another model, or damaged: rebuild
            logger.warning("item index at %s not loaded (%s); rebuilding it", cache_dir, err)
    index = cls(run.model, run.data, store=store)
    if cache_dir is not None:
        try:
            index.save(cache_dir, overwrite=True)
        except Exception as err:
            logger.warning("item index not saved to %s: %s", cache_dir, err)
    return index


def user_for_index(index, store, user_id: str | None):
    """What ``ItemIndex.rank/top_n`` get for a user: the id itself (the index reads their current
    vector and covariance from the store, piece (c)), or None for the population.

    Raises:
        KeyError: the user is not stored.
    """
    if user_id is None:
        return None
    if store is None or user_id not in store:
        raise KeyError(user_id)
    return user_id


def rank(index, user, candidate_ids: Sequence[str]) -> list[tuple[str, float]]:
    """``ItemIndex.rank(user, candidates)``; ``user`` from :func:`user_for_index`."""
    return index.rank(user, list(candidate_ids))


def top_n(index, user, n: int, exclude: Sequence[str] | None, candidates: Sequence[str] | None):
    return index.top_n(user, n=n, exclude=list(exclude) if exclude else None,
                       candidates=None if candidates is None else list(candidates))


def score_features(run: Run, features: np.ndarray, state) -> np.ndarray:
    """``plural.score_items(model, features, user=state)``: items known by their features only."""
    import plural

    return plural.score_items(run.model, features, user=state)


def warm_encoder(run: Run) -> None:
    """Load the text model by embedding one throw-away text (the cache keeps it, by its hash)."""
    if run.encoder is not None:
        run.encoder.encode(["plural: warming up the text encoder"])


def encode_texts(run: Run, texts: Sequence[str], prompt: str | Sequence[str | None] | None = None) -> np.ndarray:
    """The features ``run.model`` scores ``texts`` by: their embeddings (``run.encoder``), or, for a
    prompt-aware run, ``plural.data.prompts.encode_in_context`` of them under ``prompt`` (one text
    for all of them, or one per text; None: no prompt, the zero prompt block the model was trained
    with for comparisons without a context). A prompt-blind run ignores ``prompt``: its reward does
    not depend on one."""
    if run.encoder is None:
        raise RuntimeError("this model's catalog is not text embeddings")
    texts = list(texts)
    if not run.prompt_aware:
        return run.encoder.encode(texts)
    from plural.data.prompts import encode_in_context

    prompts = [prompt] * len(texts) if prompt is None or isinstance(prompt, str) else list(prompt)
    return encode_in_context(run.model.encoder_spec_, texts, prompts, run.encoder)


def context_prompt(run: Run, context_id: str | None) -> str | None:
    """The text of the catalog's context ``context_id`` (a prompt-aware run's prompt), or None when
    the run is prompt-blind, ``context_id`` is None or names no context with a text."""
    if not run.prompt_aware or context_id is None:
        return None
    texts = getattr(run, "_context_text", None)
    if texts is None:
        data = run.data
        texts = {}
        if data.context_ids is not None and data.context_text is not None:
            texts = {str(c): (None if t is None else str(t)) for c, t in zip(data.context_ids, data.context_text)}
        object.__setattr__(run, "_context_text", texts)
    return texts.get(context_id)


# ---------------------------------------------------------------------- active questioning
def question_pool(run: Run, n_pairs: int, random_state: int = 0):
    """A fixed pool of candidate comparisons over the catalog: ``plural.PreferenceData`` of up to
    ``n_pairs`` distinct unordered pairs, drawn once (seeded). Its labels are placeholders."""
    import plural

    ids = np.asarray(run.data.item_ids, dtype=object)
    n = len(ids)
    if n < 2:
        return None
    rng = np.random.default_rng(random_state)
    total = n * (n - 1) // 2
    if total <= n_pairs:
        a, b = np.triu_indices(n, 1)
    else:
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < n_pairs:
            x = rng.integers(0, n, size=2 * n_pairs)
            y = rng.integers(0, n, size=2 * n_pairs)
            for i, j in zip(x.tolist(), y.tolist()):
                if i != j:
                    pairs.add((min(i, j), max(i, j)))
                    if len(pairs) >= n_pairs:
                        break
        a, b = (np.array(v) for v in zip(*sorted(pairs)))
    swap = rng.random(len(a)) < 0.5  # no "first item" position in the pool
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    return plural.PreferenceData.from_records(["pool"] * len(a), ids[a], ids[b], np.ones(len(a)),
                                              item_ids=ids, item_features=run.data.item_features,
                                              name="question pool")


def next_question(run: Run, pool, rows: np.ndarray, state, strategy: str, random_state: int) -> tuple[int, float]:
    """``plural.ActiveSession`` over the pool's ``rows`` starting from ``state``: the position (in
    ``rows``) of the comparison to ask and its score under the strategy."""
    import plural

    batch = plural.comparison_batch(pool, rows, run.model)
    session = plural.ActiveSession(run.model, batch, strategy=strategy, prior=state, random_state=random_state)
    i = session.ask()
    score = float(session.scores()[i]) if strategy != "random" else float("nan")
    return i, score


def strategies() -> tuple[str, ...]:
    from plural.query.active import STRATEGIES

    return tuple(STRATEGIES)
