"""Recommending from an item catalog: the top items for a user, fast and exact.

:class:`ItemIndex` asks the model for its :class:`~plural.core.model.RetrievalForm`
(:meth:`~plural.core.model.PreferenceModel.retrieval_form`). Where the reward is an inner product in
disguise it computes every item's vector once and answers ``top_n`` with a FAISS search, then
re-scores what it retrieved exactly, so the scores returned are always the model's own:

- inner product (``r = v(x) . q(u) + b(x)``, e.g. ``low_rank``'s ``q = w0 + B u``): items
  ``[v, b]``, query ``[q(u), 1]``;
- squared distance (``r = -||v(x) - q(u)||^2 + b(x)``, e.g. ideal points): since
  ``-||v - q||^2 + b = 2 v . q - ||v||^2 + b - ||q||^2`` and ``||q||^2`` does not depend on the
  item, items ``[v, b - ||v||^2]`` and query ``[2 q(u), 1]`` rank exactly as the reward does.

Every other model (no retrieval form) is scored exactly through ``model.reward`` over the whole
catalog. The form is checked once against ``model.reward`` on random users at construction; a model
that fails the check is scored exactly.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch

from plural.data.container import PreferenceData
from plural.core.latent import inference
from plural.core.model import INNER_PRODUCT, SQUARED_DISTANCE, PreferenceModel, RetrievalForm, UserState
from plural.query.store import AUTO_HNSW_THRESHOLD, UserStore
from plural.query.store_files import import_faiss
from plural.core.fingerprint import model_fingerprint
from plural.training import saved_dir

logger = logging.getLogger(__name__)

_INDEX_KINDS = ("auto", "flat", "hnsw", "exact")
_CHUNK = 65_536  # items per forward pass when precomputing representations
FORM_LABELS = {INNER_PRODUCT: "linear", SQUARED_DISTANCE: "ideal_point"}
"""``ItemIndex.form`` of each :class:`~plural.core.model.RetrievalForm` kind."""


def retrieval_form(model: PreferenceModel) -> str | None:
    """``"linear"`` (an inner-product form), ``"ideal_point"`` (a squared-distance form) or None
    (scored exactly): the label of ``model.retrieval_form()``'s kind (:data:`FORM_LABELS`)."""
    form = model.retrieval_form()
    return None if form is None else FORM_LABELS[form.kind]


def _show(ids: list) -> str:
    head = ", ".join(repr(i) for i in ids[:5])
    return head + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")


class ItemIndex:
    """Items of a catalog, ready to be scored, ranked and recommended for any user.

    Args:
        model: a fitted :class:`~plural.core.model.PreferenceModel`.
        items: a ``PreferenceData`` (its item table, which must have features) or an
            ``(n_items, d)`` float feature matrix.
        item_ids: ids of the matrix's rows (ignored for ``PreferenceData``). Items the model knows
            use their learned identity. Without ids, items are named by their row number and are
            all treated as new to the model.
        index: ``"flat"`` (exact inner-product search), ``"hnsw"`` (approximate, re-scored exactly),
            ``"exact"`` (no FAISS: score the whole catalog), or ``"auto"``: HNSW from
            ``AUTO_HNSW_THRESHOLD`` items (``plural.query.store``'s), flat below; models without a
            retrieval form are always scored exactly.
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search breadth (raised to the number of items retrieved).
        margin: extra items retrieved beyond ``n`` and the exclusions, to be re-scored exactly.
        store: a :class:`~plural.query.store.UserStore` of this model's users: a user id given to
            ``score``/``rank``/``top_n`` is looked up there first (with its covariance), so users
            added after training (e.g. by a service) are served too; training users otherwise.
        prebuilt_index: a FAISS index over exactly these items' retrieval vectors (what
            :meth:`load` passes), used instead of building one.

    Attributes:
        item_ids: the ``n_items`` ids, in catalog order.
        form: ``"linear"`` (inner product), ``"ideal_point"`` (squared distance) or None (exact
            scoring); see :data:`FORM_LABELS`.
        index_kind: ``"flat"``, ``"hnsw"`` or ``"exact"``.

    Example:
        >>> import plural
        >>> index = ItemIndex(model, data)                                    # doctest: +SKIP
        >>> index.top_n(state, n=5, exclude=judged)                           # doctest: +SKIP
        [('i17', 3.2), ('i4', 2.9), ...]
    """

    def __init__(self, model: PreferenceModel, items: PreferenceData | Any, item_ids: Sequence | None = None,
                 index: str = "auto", *, hnsw_m: int = 32, ef_search: int = 128, margin: int = 32,
                 store: UserStore | None = None, prebuilt_index: Any = None) -> None:
        if index not in _INDEX_KINDS:
            raise ValueError(f"index must be one of {_INDEX_KINDS}, got {index!r}")
        if hnsw_m < 2 or ef_search < 1 or margin < 0:
            raise ValueError(f"need hnsw_m >= 2, ef_search >= 1, margin >= 0; got {hnsw_m!r}, "
                             f"{ef_search!r}, {margin!r}")
        model.check_is_fitted()
        features, ids = self._resolve_items(items, item_ids)
        if features.ndim != 2 or features.shape[1] != model.feature_dim_:
            raise ValueError(f"items must have shape (n_items, {model.feature_dim_}), got {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("item features must be finite (found NaN or inf)")
        self.model = model
        self.item_ids: list = ids if ids is not None else list(range(len(features)))
        self._row_of = {item: row for row, item in enumerate(self.item_ids)}
        self._id_array = np.empty(len(self.item_ids), dtype=object)
        self._id_array[:] = self.item_ids
        if len(self._row_of) != len(self.item_ids):
            seen: set = set()
            dup = next(i for i in self.item_ids if i in seen or seen.add(i))
            raise ValueError(f"item id {dup!r} appears twice")
        self.hnsw_m, self.ef_search, self.margin = int(hnsw_m), int(ef_search), int(margin)
        self.store = store
        if store is not None and self._user_dim_of(model) not in (None, store.dim):
            raise ValueError(f"store holds {store.dim}-d vectors but {type(model).__name__} has "
                             f"{self._user_dim_of(model)}-d users")
        device = model.device
        self._features = torch.from_numpy(features).to(device)
        self._model_index = None if ids is None else model.item_index(ids).to(device)
        self.user_dim = self._user_dim()
        self._form: RetrievalForm | None = model.retrieval_form()
        self._phi = self._bias = None
        if self._form is not None:
            self._phi, self._bias = self._representations()
            if not self._form_holds():
                logger.warning("%s declares a %s retrieval form but its rewards do not match it; scoring "
                               "it exactly", type(model).__name__, self._form.kind)
                self._form = self._phi = self._bias = None
        self.form = None if self._form is None else FORM_LABELS[self._form.kind]
        if self.form is None or index == "exact":
            self.index_kind = "exact"
            self._index = None
        else:
            self.index_kind = index if index != "auto" else (
                "hnsw" if len(self) >= AUTO_HNSW_THRESHOLD else "flat")
            vectors = self._item_vectors()
            self._index = self._build_index(vectors) if prebuilt_index is None else self._checked_index(
                prebuilt_index, vectors)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _resolve_items(items, item_ids) -> tuple[np.ndarray, list | None]:
        if isinstance(items, PreferenceData):
            if items.item_features is None:
                raise ValueError(f"{items.name}: items have no features; encode them first "
                                 "(plural.encode_items)")
            return np.ascontiguousarray(items.item_features, dtype=np.float32), [str(i) for i in items.item_ids]
        features = np.ascontiguousarray(items, dtype=np.float32)
        if item_ids is None:
            return features, None
        ids = [i.item() if isinstance(i, np.generic) else i for i in item_ids]
        if len(ids) != len(features):
            raise ValueError(f"got {len(ids)} item ids for {len(features)} feature rows")
        return features, ids

    @staticmethod
    def _user_dim_of(model: PreferenceModel) -> int | None:
        try:
            return int(model.user_dim)
        except NotImplementedError:
            return None

    def _user_dim(self) -> int | None:
        return self._user_dim_of(self.model)

    def _checked_index(self, index, vectors: np.ndarray):
        """``index`` if it holds these items' vectors in catalog order (checked on up to 256 rows)."""
        if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
            raise ValueError(f"the saved index holds {index.ntotal} x {index.d} vectors, the catalog "
                             f"{vectors.shape[0]} x {vectors.shape[1]}")
        rows = np.linspace(0, len(vectors) - 1, min(len(vectors), 256)).astype(np.int64)
        saved = index.reconstruct_batch(rows)
        if not np.allclose(saved, vectors[rows], atol=1e-4, rtol=1e-4):
            raise ValueError("the saved index's vectors are not this model's for these items")
        return index

    def _representations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The form's item vectors ``(n, h)`` and biases ``(n,)``, on the model's device."""
        phis, biases = [], []
        with inference(self.model):
            for start in range(0, len(self), _CHUNK):
                idx = None if self._model_index is None else self._model_index[start:start + _CHUNK]
                phi, bias = self._form.items(self._features[start:start + _CHUNK], idx)
                phis.append(phi)
                biases.append(bias)
        return torch.cat(phis), torch.cat(biases)

    def _user_query(self, u: torch.Tensor) -> torch.Tensor:
        """The form's query ``(h,)`` of a user with vector ``u (K,)``, like the item vectors."""
        with inference(self.model):
            return self._form.query(u.to(self._phi.device, self._phi.dtype)).to(self._phi.dtype)

    def _query(self, u: torch.Tensor) -> np.ndarray:
        """The ``(1, h + 1)`` float32 FAISS query of a user with vector ``u (K,)``."""
        with torch.no_grad():
            direction = self._user_query(u)
            if self._form.kind == SQUARED_DISTANCE:
                direction = 2 * direction
            q = torch.cat([direction, direction.new_ones(1)])
        return np.ascontiguousarray(q.float().cpu().numpy().reshape(1, -1))

    def _item_vectors(self) -> np.ndarray:
        """``(n, h + 1)`` float32 vectors whose inner product with :meth:`_query` ranks as the reward."""
        with torch.no_grad():
            last = self._bias if self._form.kind == INNER_PRODUCT else self._bias - self._phi.pow(2).sum(-1)
            x = torch.cat([self._phi, last.unsqueeze(-1)], dim=1)
        return np.ascontiguousarray(x.float().cpu().numpy())

    def _form_holds(self) -> bool:
        """On random users, does the form give ``model.reward``'s scores, and do inner products with
        :meth:`_query` equal them up to a per-user constant?"""
        rows = torch.arange(min(len(self), 256), device=self._phi.device)
        vectors = torch.from_numpy(self._item_vectors()[rows.cpu().numpy()]).double()
        idx = None if self._model_index is None else self._model_index[rows]
        gen = torch.Generator().manual_seed(0)
        for u in [torch.zeros(self.user_dim)] + [torch.randn(self.user_dim, generator=gen) for _ in range(3)]:
            with inference(self.model):
                exact = self.model.reward(self._features[rows], UserState(vector=u), idx).double().cpu()
            scale = 1e-3 * (1.0 + exact.abs().max())
            formed = self._exact(rows, UserState(vector=u)).double().cpu()
            if float((formed - exact).abs().max()) > scale:
                return False
            gap = vectors @ torch.from_numpy(self._query(u)[0]).double() - exact
            if float(gap.max() - gap.min()) > scale:
                return False
        return True

    def _build_index(self, vectors: np.ndarray):
        faiss = import_faiss()
        dim = vectors.shape[1]
        if self.index_kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = max(80, 2 * self.hnsw_m)
        else:
            index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index

    # ------------------------------------------------------------------ checks
    def _state(self, user: UserState | str | Any | None) -> UserState | None:
        """A checked :class:`UserState` (None for the population reward)."""
        if user is None:
            return None
        if isinstance(user, str):
            if self.store is not None and user in self.store:
                covariance = self.store.get_covariance(user)[0]
                return UserState(vector=torch.from_numpy(self.store.get(user)[0]), user_id=user,
                                 covariance=None if covariance is None else torch.from_numpy(covariance))
            row = int(self.model.user_index([user])[0])
            if row < 0:
                where = "in the store or " if self.store is not None else ""
                raise ValueError(f"unknown user id {user!r}: not {where}seen in training; adapt a state for "
                                 "them instead")
            return UserState(vector=self.model.user_states()[row].detach().cpu(), user_id=user)
        if not isinstance(user, UserState):
            if isinstance(user, (np.ndarray, torch.Tensor, list, tuple)):
                user = UserState(vector=torch.as_tensor(np.asarray(user, dtype=np.float32)))
            else:
                raise TypeError(f"user must be a UserState, a seen user id, a vector or None, got "
                                f"{type(user).__name__}")
        vector = user.vector if isinstance(user.vector, torch.Tensor) else torch.as_tensor(user.vector)
        if self.user_dim is not None and tuple(vector.shape) != (self.user_dim,):
            raise ValueError(f"{type(self.model).__name__} user states are ({self.user_dim},) vectors, "
                             f"got shape {tuple(vector.shape)}")
        if not torch.isfinite(vector).all():
            raise ValueError("user state vector holds NaN or inf")
        return user

    def _rows(self, ids: Iterable[Hashable] | None, what: str) -> np.ndarray:
        if ids is None:
            return np.empty(0, dtype=np.int64)
        ids = [ids] if isinstance(ids, (str, bytes)) else list(ids)
        try:
            return np.fromiter(map(self._row_of.__getitem__, ids), dtype=np.int64, count=len(ids))
        except (KeyError, TypeError):
            unknown = [i for i in ids if not self._known(i)]
            raise ValueError(f"unknown item ids in {what}: {_show(unknown)}") from None

    def _known(self, item_id: Any) -> bool:
        try:
            return item_id in self._row_of
        except TypeError:  # unhashable
            return False

    # ------------------------------------------------------------------ exact scoring
    def _exact(self, rows: torch.Tensor | None, state: UserState | None) -> torch.Tensor:
        """Model scores of the items at ``rows`` (all items for None), as ``model.reward`` gives them."""
        model = self.model
        with inference(model):
            if self._form is not None:  # the form's own formula over the precomputed item vectors
                phi = self._phi if rows is None else self._phi[rows]
                bias = self._bias if rows is None else self._bias[rows]
                vec = torch.zeros(self.user_dim) if state is None else state.vector
                return self._form.score(phi, bias, self._user_query(vec))
            x = self._features if rows is None else self._features[rows]
            idx = self._model_index
            if idx is not None and rows is not None:
                idx = idx[rows]
            return model.reward(x, state, idx)

    def _ranked(self, rows: np.ndarray, scores: np.ndarray, n: int | None = None) -> list[tuple[Any, float]]:
        order = np.argsort(-scores, kind="stable")
        if n is not None:
            order = order[:n]
        return list(zip(self._id_array[rows[order]].tolist(), scores[order].tolist()))

    def _scores_at(self, rows: np.ndarray, state: UserState | None) -> np.ndarray:
        index = torch.from_numpy(rows).to(self._features.device)
        return self._exact(index, state).float().cpu().numpy()

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self.item_ids)

    def __repr__(self) -> str:
        return (f"ItemIndex(model={type(self.model).__name__}, n_items={len(self)}, "
                f"form={self.form!r}, index={self.index_kind!r})")

    def score(self, user: UserState | str | None = None) -> np.ndarray:
        """Exact scores ``(n_items,)`` of every item for ``user`` (a :class:`UserState`, a stored or
        seen user's id, or None for the population reward), in catalog order."""
        state = self._state(user)
        return self._exact(None, state).float().cpu().numpy()

    def rank(self, user: UserState | str | None, candidate_ids: Iterable[Hashable]) -> list[tuple[Any, float]]:
        """``candidate_ids`` sorted best first by their exact score, as ``(item_id, score)`` pairs.

        Raises:
            ValueError: a candidate is not in the catalog.
        """
        state = self._state(user)
        rows = self._rows(candidate_ids, "candidate_ids")
        if len(rows) == 0:
            return []
        seen = np.zeros(len(self), dtype=bool)
        seen[rows] = True
        if np.count_nonzero(seen) != len(rows):  # a repeated candidate is ranked once
            rows = np.flatnonzero(seen)
        return self._ranked(rows, self._scores_at(rows, state))

    def top_n(self, user: UserState | str | None = None, n: int = 10, exclude: Iterable[Hashable] | None = None,
              candidates: Iterable[Hashable] | None = None) -> list[tuple[Any, float]]:
        """The ``n`` best items for ``user``, best first, as ``(item_id, score)`` pairs.

        Args:
            user: a :class:`UserState`, a stored or seen user's id, or None for the population reward.
            n: how many items; fewer come back only when fewer than ``n`` items are eligible.
            exclude: item ids never to return (e.g. the items the user already judged).
            candidates: if given, recommend only among these item ids.

        Returns:
            up to ``n`` pairs; scores are the model's exact rewards, whatever index retrieved them.

        Raises:
            ValueError: ``n < 1``, an unknown item id in ``exclude`` or ``candidates``, or a bad state.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        n = int(n)
        state = self._state(user)
        excluded = self._rows(exclude, "exclude")
        if candidates is not None:
            rows = np.setdiff1d(self._rows(candidates, "candidates"), excluded)
            return self._ranked(rows, self._scores_at(rows, state), n) if len(rows) else []
        n_eligible = len(self) - len(np.unique(excluded))
        if n_eligible <= 0:
            return []
        if self._index is None or n + len(excluded) + self.margin >= len(self):
            return self._top_exact(state, n, excluded)
        return self._top_retrieved(state, n, excluded, min(n, n_eligible))

    def _top_exact(self, state: UserState | None, n: int, excluded: np.ndarray) -> list[tuple[Any, float]]:
        scores = self._exact(None, state).float().cpu().numpy()
        eligible = np.ones(len(self), dtype=bool)
        eligible[excluded] = False
        rows = np.flatnonzero(eligible)
        if n < len(rows):
            rows = rows[np.argpartition(-scores[rows], n - 1)[:n]]
        return self._ranked(rows, scores[rows])

    def _top_retrieved(self, state: UserState | None, n: int, excluded: np.ndarray, wanted: int
                       ) -> list[tuple[Any, float]]:
        faiss = import_faiss()
        u = torch.zeros(self.user_dim) if state is None else state.vector
        query = self._query(u)
        k = n + len(excluded) + max(self.margin, n)
        excluded_set = set(excluded.tolist())
        while True:
            k = min(k, len(self))
            if self.index_kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
                _, found = self._index.search(query, k, params=params)
            else:
                _, found = self._index.search(query, k)
            rows = np.asarray([r for r in found[0].tolist() if r >= 0 and r not in excluded_set], np.int64)
            if len(rows) >= wanted:
                return self._ranked(rows, self._scores_at(rows, state), n)
            if k >= len(self):  # the approximate index could not reach enough items
                return self._top_exact(state, n, excluded)
            k *= 2

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the catalog to the directory ``path`` (through ``plural.training.saved_dir``:
        atomic, fsynced, checksummed): ``item_index.json`` (format version, the model's
        fingerprint, the item ids, the index settings), ``features.npy`` and, for a searched index,
        ``index.faiss``, so :meth:`load` skips rebuilding it.

        Raises:
            ValueError: an item id is not a str or int (ids are saved as JSON).
            FileExistsError: ``path`` holds files that are not a saved item index and ``overwrite``
                is False.
        """
        bad = next((i for i in self.item_ids if isinstance(i, bool) or not isinstance(i, (str, int))), None)
        if bad is not None:
            raise ValueError(f"item ids must be str or int to be saved, got {type(bad).__name__} {bad!r}")
        faiss = import_faiss()
        meta = {"format_version": ITEM_INDEX_VERSION, "model": self.model.name,
                "model_fingerprint": model_fingerprint(self.model), "item_ids": list(self.item_ids),
                "named": self._model_index is not None, "index": self.index_kind, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search, "margin": self.margin}
        features = self._features.float().cpu().numpy()

        def fill(tmp: Path) -> None:
            np.save(tmp / "features.npy", features, allow_pickle=False)
            if self._index is not None:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
            (tmp / ITEM_INDEX_FILE).write_text(json.dumps(meta))

        return saved_dir.write(Path(path), fill, what="a saved ItemIndex", is_kind=_is_item_index,
                               known_names=(ITEM_INDEX_FILE, "features.npy", "index.faiss"), overwrite=overwrite,
                               error=ValueError)

    @classmethod
    def load(cls, path: str | os.PathLike, model: PreferenceModel, *, store: UserStore | None = None) -> "ItemIndex":
        """An :class:`ItemIndex` saved by :meth:`save`, for ``model`` (the one it was saved with:
        its fingerprint is checked), its files verified against their checksums.

        Raises:
            ValueError: missing, altered or inconsistent files, or a save made for another model.
        """
        faiss = import_faiss()
        with saved_dir.reading(Path(path), ITEM_INDEX_FILE, ValueError) as path:
            recorded = saved_dir.verify(path, ValueError)
            saved_dir.require(path, (ITEM_INDEX_FILE, "features.npy"), recorded, ValueError)
            try:
                meta = json.loads((path / ITEM_INDEX_FILE).read_text())
                version, ids, kind = meta["format_version"], meta["item_ids"], meta["index"]
                features = np.load(path / "features.npy", allow_pickle=False)
                index = faiss.read_index(str(path / "index.faiss")) if (path / "index.faiss").is_file() else None
            except Exception as err:  # json, numpy and FAISS raise their own types on bad files
                raise ValueError(f"{path} is not a readable saved ItemIndex: {type(err).__name__}: {err}") from None
        if version != ITEM_INDEX_VERSION:
            raise ValueError(f"{path}: item index format version {version!r} is not supported")
        if meta.get("model_fingerprint") != model_fingerprint(model):
            raise ValueError(f"{path} was saved for another model ({meta.get('model')!r}, fingerprint "
                             f"{str(meta.get('model_fingerprint'))[:12]}...); rebuild it with ItemIndex(model, items)")
        if (kind == "exact") != (index is None) or features.dtype != np.float32 or len(features) != len(ids):
            raise ValueError(f"{path} is inconsistent: index {kind!r}, {len(ids)} ids, features "
                             f"{features.shape} {features.dtype}")
        return cls(model, features, ids if meta.get("named", True) else None, index=kind, hnsw_m=meta["hnsw_m"],
                   ef_search=meta["ef_search"], margin=meta["margin"], store=store, prebuilt_index=index)


ITEM_INDEX_FILE = "item_index.json"
ITEM_INDEX_VERSION = 1


def _is_item_index(path: Path) -> bool:
    meta = saved_dir.marker(path, ITEM_INDEX_FILE)
    return meta is not None and "format_version" in meta
