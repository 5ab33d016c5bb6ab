#!/usr/bin/env python
"""Regenerate the bundled Polis files from the raw archive.

    python datasets/polis/prepare.py RAW_DATA_DIR

RAW_DATA_DIR (the folder the raw download was unpacked into, see README.md beside this file) must hold
``polis/polis_opendata_14conversations.tar.xz`` (compdemocracy/openData @ 0bc2ce0f).
Keeps the 12 English conversations (drops ``vtaiwan.uberx``, Chinese, and ``austria-climate*``,
German) and writes, next to this script:

- ``votes.csv.gz``: each voter's LAST vote per statement (by timestamp; equal timestamps keep the
  later row of votes.csv): conversation, voter_id, comment_id, vote (1 agree, -1 disagree, 0 pass).
  Passes are kept here (the loader drops and counts them) so a later pass overrides an earlier vote.
- ``comments.csv.gz``: conversation, comment_id, moderated, text (every statement, moderated or not).
- ``conversations.csv``: conversation, topic, url, n_votes_raw, n_votes_last.

Deterministic: rows are sorted, gzip headers carry no timestamp. Stdlib + pandas only.
"""
from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
EXCLUDED = ("vtaiwan.uberx", "austria-climate")  # not English


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    """gzip CSV with mtime=0 so the bytes depend on the content only."""
    data = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=9) as gz:
        gz.write(data)


def english(conversation: str) -> bool:
    return not any(conversation == x or conversation.startswith(x) for x in EXCLUDED)


def read_archive(archive: Path) -> dict[str, dict[str, bytes]]:
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(archive, "r:xz") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 2 and parts[-1] in ("votes.csv", "comments.csv",
                                                               "summary.csv"):
                files.setdefault(parts[-2], {})[parts[-1]] = tar.extractfile(m).read()
    return files


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: python {Path(argv[0]).as_posix()} RAW_DATA_DIR (see README.md beside this script)")
    raw = Path(argv[1])
    files = read_archive(raw.resolve() / "polis" / "polis_opendata_14conversations.tar.xz")
    votes, comments, convs = [], [], []
    for conv in sorted(files):
        if not english(conv):
            print(f"skip {conv} (not English)")
            continue
        f = files[conv]
        summary = pd.read_csv(io.BytesIO(f["summary.csv"]), header=None, index_col=0)[1]
        v = pd.read_csv(io.BytesIO(f["votes.csv"]))
        c = pd.read_csv(io.BytesIO(f["comments.csv"]), keep_default_na=False)
        v["row"] = range(len(v))
        last = (v.sort_values(["timestamp", "row"], kind="mergesort")
                 .drop_duplicates(["voter-id", "comment-id"], keep="last"))
        if not last["comment-id"].isin(c["comment-id"]).all():
            raise ValueError(f"{conv}: a vote names a statement missing from comments.csv")
        votes.append(pd.DataFrame({"conversation": conv, "voter_id": last["voter-id"].astype(int),
                                   "comment_id": last["comment-id"].astype(int),
                                   "vote": last["vote"].astype(int)}))
        comments.append(pd.DataFrame({"conversation": conv, "comment_id": c["comment-id"].astype(int),
                                      "moderated": c["moderated"].astype(int),
                                      "text": c["comment-body"].astype(str).str.strip()}))
        convs.append((conv, str(summary["topic"]).strip(), str(summary["url"]).strip(), len(v),
                      len(last)))
    votes = pd.concat(votes).sort_values(["conversation", "voter_id", "comment_id"])
    comments = pd.concat(comments).sort_values(["conversation", "comment_id"])
    convs = pd.DataFrame(convs, columns=["conversation", "topic", "url", "n_votes_raw",
                                         "n_votes_last"])
    write_csv_gz(votes.reset_index(drop=True), HERE / "votes.csv.gz")
    write_csv_gz(comments.reset_index(drop=True), HERE / "comments.csv.gz")
    convs.to_csv(HERE / "conversations.csv", index=False, lineterminator="\n")
    n = votes.vote.value_counts()
    print(f"conversations={len(convs)} raw_votes={convs.n_votes_raw.sum()} last_votes={len(votes)} "
          f"agree={n.get(1, 0)} disagree={n.get(-1, 0)} pass={n.get(0, 0)} "
          f"voters={votes.groupby(['conversation', 'voter_id']).ngroups} comments={len(comments)}")


if __name__ == "__main__":
    main(sys.argv)
