#!/usr/bin/env python
"""Regenerate the bundled UKPConvArg1 files from the raw archive.

    python datasets/ukpconvarg1/prepare.py RAW_DATA_DIR

RAW_DATA_DIR (the folder the raw download was unpacked into, see README.md beside this file) must hold
``ukpconvarg1/UKPConvArg1-full-XML.tar.xz`` (UKPLab/acl2016-convincing-arguments @ ca9d24e4).
Writes, next to this script:

- ``judgments.csv.gz``: one row per crowd judgment (worker, topic, pair_id, arg1, arg2, value, label)
- ``arguments.csv.gz``: one row per distinct argument (arg_id, topic, stance, text)
- ``topics.csv``: one row per debate file (topic, title, stance)

Deterministic: rows are sorted, gzip headers carry no timestamp. Stdlib + pandas only.
"""
from __future__ import annotations

import gzip
import io
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
LABELS = {"a1": 1.0, "a2": 0.0, "equal": 0.5}


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    """gzip CSV with mtime=0 so the bytes depend on the content only."""
    data = df.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=9) as gz:
        gz.write(data)


def parse(archive: Path):
    judgments, arguments, topics = [], {}, {}
    with tarfile.open(archive, "r:xz") as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".xml")),
                         key=lambda m: m.name)
        for member in members:
            topic = Path(member.name).stem
            root = ET.parse(io.BytesIO(tar.extractfile(member).read())).getroot()
            for pair in root.iter("annotatedArgumentPair"):
                ids = []
                for tag in ("arg1", "arg2"):
                    arg = pair.find(tag)
                    arg_id, text = arg.findtext("id").strip(), arg.findtext("text")
                    stance = (arg.findtext("stance") or "").strip()
                    old = arguments.setdefault(arg_id, (topic, stance, text))
                    if old != (topic, stance, text):
                        raise ValueError(f"argument {arg_id} has two different records")
                    ids.append(arg_id)
                title = pair.findtext("debateMetaData/title").strip()
                stance = arguments[ids[0]][1]
                if topics.setdefault(topic, (title, stance)) != (title, stance):
                    raise ValueError(f"{topic}: more than one title/stance")
                pair_id = pair.findtext("id").strip()
                for a in pair.find("mTurkAssignments").iter("mTurkAssignment"):
                    value = a.findtext("value").strip()
                    judgments.append((a.findtext("turkID").strip(), topic, pair_id, ids[0], ids[1],
                                      value, LABELS[value]))
    judg = pd.DataFrame(judgments, columns=["worker", "topic", "pair_id", "arg1", "arg2", "value",
                                            "label"])
    judg = judg.sort_values(["topic", "pair_id", "worker", "value"], kind="mergesort")
    args = pd.DataFrame([(k, *v) for k, v in arguments.items()],
                        columns=["arg_id", "topic", "stance", "text"]).sort_values("arg_id")
    tops = pd.DataFrame([(k, *v) for k, v in topics.items()],
                        columns=["topic", "title", "stance"]).sort_values("topic")
    return judg.reset_index(drop=True), args.reset_index(drop=True), tops.reset_index(drop=True)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: python {Path(argv[0]).as_posix()} RAW_DATA_DIR (see README.md beside this script)")
    raw = Path(argv[1])
    judg, args, tops = parse(raw.resolve() / "ukpconvarg1" / "UKPConvArg1-full-XML.tar.xz")
    write_csv_gz(judg, HERE / "judgments.csv.gz")
    write_csv_gz(args, HERE / "arguments.csv.gz")
    tops.to_csv(HERE / "topics.csv", index=False, lineterminator="\n")
    print(f"judgments={len(judg)} workers={judg.worker.nunique()} arguments={len(args)} "
          f"pairs={judg.drop_duplicates(['topic', 'pair_id']).shape[0]} topics={len(tops)} "
          f"ties={(judg.label == 0.5).sum()} a1={(judg.label == 1).sum()} "
          f"a2={(judg.label == 0).sum()}")


if __name__ == "__main__":
    main(sys.argv)
