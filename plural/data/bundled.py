"""The three real datasets bundled in the repository's ``datasets/`` folder.

>>> from plural.data.bundled import load
>>> data = load("polis")                      # doctest: +SKIP

The data lives in the source repository, not in the Python package: a ``pip install`` holds the
library only (the datasets' licences are not the code's). :func:`datasets_dir` finds the folder in
``$PLURAL_DATASETS_DIR`` or, in a source checkout, next to the package; elsewhere :func:`load`
raises a ``FileNotFoundError`` saying where to get it.

Each ``datasets/<name>/`` holds compact files derived from the raw sources by its ``prepare.py``
and a ``README.md`` card (source, licence, schema, counts). The files keep the raw units (crowd
judgments, last votes, ratings); pairs are formed here, at load time, by the converters in
:mod:`plural.data.converters`, so the cap and seed are arguments of :func:`load`:

- ``ukpconvarg1``: each crowd judgment is a comparison (label 1 = arg1 more convincing, 0 = arg2,
  0.5 = "equal"); the context is the debate (file stem), with its title and stance as text.
- ``polis``: the 12 English conversations; each voter's last vote per statement, passes dropped,
  every agreed statement preferred over every disagreed one; voters and statements namespaced
  ``"<conversation>/<id>"``; the context is the conversation, with its topic as text.
- ``movielens``: ml-latest-small; within a user, a movie rated at least 1.0 higher is preferred.
  Items carry text (``"Title (year) | Genre1, Genre2"``) and 22-d features (20-genre multi-hot,
  standardized year, year-missing flag).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from plural.data.container import PreferenceData
from plural.data.converters import from_ratings, from_votes

__all__ = ["DATASETS", "datasets_dir", "load"]

DATASETS = ("ukpconvarg1", "polis", "movielens")
ENV_VAR = "PLURAL_DATASETS_DIR"
CHECKOUT_DATASETS = Path(__file__).resolve().parents[2] / "datasets"
"""Where a source checkout keeps the datasets (``<repo>/datasets``). After a ``pip install`` this
is ``site-packages/datasets``: nothing, or the Hugging Face ``datasets`` package, which
:func:`datasets_dir` tells apart from plural's data folder."""

_PROVENANCE = {
    "ukpconvarg1": {
        "source": "UKPLab/acl2016-convincing-arguments @ ca9d24e4, data/UKPConvArg1-full-XML",
        "licence": "CC BY 4.0",
        "attribution": "Ivan Habernal and Iryna Gurevych. 2016. Which argument is more convincing? "
                       "Analyzing and predicting convincingness of Web arguments using "
                       "bidirectional LSTM. In Proceedings of ACL 2016, pages 1589-1599.",
    },
    "polis": {
        "source": "compdemocracy/openData @ 0bc2ce0f, 12 English conversations",
        "licence": "CC BY 4.0",
        "attribution": "Data was gathered using the Polis software (compdemocracy.org/polis) and is "
                       "sub-licensed under CC BY 4.0 with Attribution to The Computational "
                       "Democracy Project. See datasets/polis/README.md for the case-study links.",
    },
    "movielens": {
        "source": "MovieLens ml-latest-small (GroupLens, 2018-09-26 release), via "
                  "AjiLeight/movielens-recommendation-tries @ b1953418",
        "licence": "GroupLens MovieLens terms of use (see datasets/movielens/README.txt)",
        "attribution": "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: "
                       "History and Context. ACM Transactions on Interactive Intelligent Systems "
                       "(TiiS) 5, 4: 19:1-19:19. https://doi.org/10.1145/2827872",
    },
}


def _is_data_folder(path: Path) -> bool:
    """A folder of plural's dataset cards: ``<name>/README.md`` for a bundled name, and not a Python
    package (``site-packages/datasets`` may be Hugging Face's)."""
    return (path.is_dir() and not (path / "__init__.py").exists()
            and any((path / name / "README.md").is_file() for name in DATASETS))


def datasets_dir() -> Path:
    """The folder holding the bundled datasets: ``$PLURAL_DATASETS_DIR`` if set, else a source
    checkout's ``datasets/`` folder (:data:`CHECKOUT_DATASETS`).

    Raises:
        FileNotFoundError: neither is plural's data folder (after a plain ``pip install``), with
            the way to get it.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not _is_data_folder(path):
            raise FileNotFoundError(
                f"${ENV_VAR}={env!r} is not plural's datasets folder (it needs <name>/README.md for one of "
                f"{', '.join(DATASETS)}); point it at the datasets/ folder of a clone of plural's repository")
        return path
    if _is_data_folder(CHECKOUT_DATASETS):
        return CHECKOUT_DATASETS
    raise FileNotFoundError(
        f"plural's bundled datasets ({', '.join(DATASETS)}) are not part of the installed package "
        f"(looked for a source checkout's datasets/ folder at {CHECKOUT_DATASETS}). They live in the "
        f"datasets/ folder of plural's source repository: clone it and set {ENV_VAR} to that folder "
        f"(export {ENV_VAR}=/path/to/plural/datasets), or install plural from the clone "
        f"(pip install -e /path/to/plural). Your own files load with plural.from_file.")


def load(name: str, *, drop_ties: bool = False, max_pairs_per_user: int | None = 500,
         random_state: int | None = 0) -> PreferenceData:
    """Load a bundled dataset as :class:`PreferenceData` named after it.

    Args:
        name: one of :data:`DATASETS`.
        drop_ties: remove tied comparisons (only UKPConvArg1 has any); the count goes to
            ``meta["dropped_ties"]``.
        max_pairs_per_user: cap on the pairs formed per voter / user (Polis, MovieLens), sampled
            uniformly with ``random_state``; None keeps all. UKPConvArg1 is natively pairwise and
            ignores it.
        random_state: seed for the sampling and the random orientation of derived pairs.

    Returns:
        The comparisons; ``meta`` holds ``source``, ``licence``, ``attribution`` and the counts the
        converters record (rows dropped on purpose, pairs capped).
    """
    loaders = {"ukpconvarg1": _ukpconvarg1, "polis": _polis, "movielens": _movielens}
    if name not in loaders:
        raise ValueError(f"unknown bundled dataset {name!r}; known: {', '.join(DATASETS)}")
    folder = datasets_dir() / name
    if not folder.is_dir():
        raise FileNotFoundError(f"bundled dataset folder {folder} is missing")
    data = loaders[name](folder, max_pairs_per_user, random_state)
    data.name = name
    data.meta = {"dataset": name, **_PROVENANCE[name], **data.meta}
    if drop_ties:
        data, n_dropped = data.drop_ties()
        data.meta.setdefault("dropped_ties", n_dropped)
    return data


def _read(folder: Path, file: str, **kwargs) -> pd.DataFrame:
    path = folder / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate it with {folder / 'prepare.py'}")
    return pd.read_csv(path, keep_default_na=False, **kwargs)


def _ukpconvarg1(folder: Path, cap: int | None, seed: int | None) -> PreferenceData:
    """Natively pairwise: one comparison per crowd judgment, in the order the XML gives the pair."""
    judg = _read(folder, "judgments.csv.gz", dtype={"worker": str, "arg1": str, "arg2": str})
    args = _read(folder, "arguments.csv.gz", dtype={"arg_id": str})
    topics = _read(folder, "topics.csv")
    topic_text = [f"{t} (stance: {s})" for t, s in zip(topics.title, topics.stance)]
    return PreferenceData.from_records(
        judg.worker.to_numpy(), judg.arg1.to_numpy(), judg.arg2.to_numpy(), judg.label.to_numpy(),
        item_ids=args.arg_id.to_numpy(), item_text=args.text.to_numpy(),
        contexts=judg.topic.tolist(), context_ids=topics.topic.to_numpy(), context_text=topic_text,
        # natively pairwise with a median of 4 decisive judgments per worker: PROTOCOL.md splits
        # each worker's comparisons, not their items
        meta={"n_judgments": len(judg), "n_ties": int((judg.label == 0.5).sum()),
              "split_mode": "comparisons"})


def _polis(folder: Path, cap: int | None, seed: int | None) -> PreferenceData:
    """Agreed statement over disagreed statement, within one voter of one conversation."""
    votes = _read(folder, "votes.csv.gz", dtype={"voter_id": str, "comment_id": str})
    comments = _read(folder, "comments.csv.gz", dtype={"comment_id": str})
    convs = _read(folder, "conversations.csv")
    votes["item_id"] = votes.conversation + "/" + votes.comment_id
    items = pd.DataFrame({"item_id": comments.conversation + "/" + comments.comment_id,
                          "text": comments.text})
    data = from_votes(votes, user="voter_id", item="item_id", vote="vote", group="conversation",
                      max_pairs_per_user=cap, item_table=items, random_state=seed, name="polis")
    # from_votes makes each voter's conversation the context; attach the conversations' topics
    topic = dict(zip(convs.conversation.astype(str), convs.topic))
    return dataclasses.replace(data, context_text=np.array([topic[c] for c in data.context_ids], dtype=object))


def _movielens(folder: Path, cap: int | None, seed: int | None) -> PreferenceData:
    """Within a user, a movie rated at least 1.0 higher is preferred; items carry features."""
    ratings = _read(folder, "ratings.csv.gz", dtype={"user_id": str, "movie_id": str})
    movies = _read(folder, "movies.csv.gz", dtype={"movie_id": str})
    data = from_ratings(ratings, user="user_id", item="movie_id", rating="rating", min_gap=1.0,
                        max_pairs_per_user=cap, item_table=movies, item_id="movie_id",
                        item_text="text", random_state=seed, name="movielens")
    features, names = _movie_features(movies)
    row = pd.Index(movies.movie_id).get_indexer(data.item_ids)
    data = data.with_features(features[row])
    data.meta["feature_names"] = names
    return data


def _movie_features(movies: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """``(n_movies, 22)`` float32: genre multi-hot (20 genres, sorted, incl. "(no genres listed)"),
    year standardized over the movies that have one (0 where missing), and a year-missing flag."""
    genres = movies.genres.str.get_dummies(sep="|")
    genres = genres[sorted(genres.columns)]
    year = pd.to_numeric(movies.year, errors="coerce").to_numpy(dtype=np.float64)
    missing = np.isnan(year)
    year_z = np.zeros_like(year)
    year_z[~missing] = (year[~missing] - year[~missing].mean()) / year[~missing].std()
    features = np.column_stack([genres.to_numpy(np.float32), year_z, missing]).astype(np.float32)
    names = [f"genre:{g}" for g in genres.columns] + ["year_z", "year_missing"]
    return features, names
