#!/usr/bin/env python
"""Regenerate the bundled MovieLens (ml-latest-small) files from the raw csv files.

    python datasets/movielens/prepare.py RAW_DATA_DIR

RAW_DATA_DIR (the folder the raw download was unpacked into, see README.md beside this file) must hold
``movielens_latest_small/{ratings,movies}.csv`` and ``README.txt`` (the 2018-09-26 release, via
AjiLeight/movielens-recommendation-tries @ b1953418). Writes, next to this script:

- ``ratings.csv.gz``: user_id, movie_id, rating (0.5..5.0); the timestamp column is dropped.
- ``movies.csv.gz``: movie_id, title, year (empty when the title carries none), genres
  (``|``-separated as in movies.csv), text (``"Title (year) | Genre1, Genre2"``; just the title
  when no genres are listed).
- ``README.txt``: the original GroupLens README, byte for byte (its licence requires it).

Deterministic: rows are sorted, gzip headers carry no timestamp. Stdlib + pandas only.
"""
from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
NO_GENRES = "(no genres listed)"


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    """gzip CSV with mtime=0 so the bytes depend on the content only."""
    data = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=9) as gz:
        gz.write(data)


def movie_text(title: str, genres: str) -> str:
    if genres == NO_GENRES:
        return title
    return f"{title} | {', '.join(genres.split('|'))}"


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: python {Path(argv[0]).as_posix()} RAW_DATA_DIR (see README.md beside this script)")
    raw = Path(argv[1])
    src = raw.resolve() / "movielens_latest_small"
    ratings = pd.read_csv(src / "ratings.csv")
    movies = pd.read_csv(src / "movies.csv", keep_default_na=False)
    if ratings.duplicated(["userId", "movieId"]).any():
        raise ValueError("a user rated one movie twice")
    if not ratings.movieId.isin(movies.movieId).all():
        raise ValueError("a rating names a movie missing from movies.csv")
    ratings = (ratings.rename(columns={"userId": "user_id", "movieId": "movie_id"})
               [["user_id", "movie_id", "rating"]].sort_values(["user_id", "movie_id"]))
    title = movies.title.str.strip()
    year = title.str.extract(r"\((\d{4})\)$")[0].astype("Int64")
    movies = pd.DataFrame({"movie_id": movies.movieId, "title": title, "year": year,
                           "genres": movies.genres,
                           "text": [movie_text(t, g) for t, g in zip(title, movies.genres)]})
    movies = movies.sort_values("movie_id")
    write_csv_gz(ratings.reset_index(drop=True), HERE / "ratings.csv.gz")
    write_csv_gz(movies.reset_index(drop=True), HERE / "movies.csv.gz")
    shutil.copyfile(src / "README.txt", HERE / "README.txt")
    genres = sorted({g for gs in movies.genres for g in gs.split("|")})
    print(f"ratings={len(ratings)} users={ratings.user_id.nunique()} "
          f"rated_movies={ratings.movie_id.nunique()} movies={len(movies)} genres={len(genres)} "
          f"no_year={int(movies.year.isna().sum())}")


if __name__ == "__main__":
    main(sys.argv)
