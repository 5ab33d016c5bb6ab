"""Headroom for personalization on Polis: a model-free reference under the bench's protocol.

    python benchmarks/polis_headroom.py [--seeds 0,1,2] [--users 100] [--out runs/polis_headroom.json]

For each conversation, the seen users' training votes (recovered from their pairs: the preferred
statement was agreed with, the other disagreed with) form a users x statements matrix of +1 / -1 /
missing. Its shrunk column means are the population score; the top ``rank`` right singular vectors
of the centred matrix are statement factors. A new user's factor is the ridge fit (penalty ``lam``)
of their support votes on those factors; query pairs are ranked by ``mean + factors @ p``. This is
classical vote-matrix collaborative filtering, the kind of model Polis's own opinion-group view
rests on, scored on exactly the episodes of ``plural bench`` (item-disjoint, 100 unseen users per
seed, 3 draws), with the paired gain over k=0 computed the same way.

Every (rank, lam) of a small grid is reported, and the best per k is picked on the scored users
themselves, so the "best" row is an optimistic reference: a ceiling for this kind of model, not a
fair competitor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from plural.data.splits import DEFAULT_SHOTS, make_episodes
from plural.evaluation.protocol import protocol_split
from plural.training.runs import load_dataset

GRID = [(rank, lam) for rank in (2, 4, 8) for lam in (0.3, 1.0, 3.0)]


def votes_of(data, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(items, votes)``: +1 for the preferred statement of each pair, -1 for the other."""
    win = np.where(data.label[rows] == 1, data.item_a[rows], data.item_b[rows])
    lose = np.where(data.label[rows] == 1, data.item_b[rows], data.item_a[rows])
    return np.concatenate([win, lose]), np.concatenate([np.ones(len(win)), -np.ones(len(lose))])


def fit_factors(data, train: np.ndarray, max_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (n_items,), factors (n_items, max_rank))`` from the training votes, per conversation."""
    items, votes = votes_of(data, train)
    users = np.concatenate([data.user[train], data.user[train]])
    _, first = np.unique(users.astype(np.int64) * len(data.item_ids) + items, return_index=True)
    users, items, votes = users[first], items[first], votes[first]  # one vote per (user, statement)
    conversation = np.full(len(data.item_ids), -1)
    conversation[data.item_a[train]] = data.context[train]
    conversation[data.item_b[train]] = data.context[train]
    mean = np.zeros(len(data.item_ids))
    factors = np.zeros((len(data.item_ids), max_rank))
    for c in np.unique(data.context[train]):
        cols = np.flatnonzero(conversation == c)
        keep = np.isin(items, cols)
        rows_c = np.unique(users[keep])
        i, j = np.searchsorted(rows_c, users[keep]), np.searchsorted(cols, items[keep])
        matrix = np.zeros((len(rows_c), len(cols)))
        seen = np.zeros_like(matrix)
        matrix[i, j], seen[i, j] = votes[keep], 1.0
        count = seen.sum(0)
        mean_c = matrix.sum(0) / (count + 2.0)  # shrunk towards 0 for rarely voted statements
        _, sv, vt = np.linalg.svd((matrix - mean_c) * seen, full_matrices=False)
        r = min(max_rank, len(sv))
        factors[cols, :r] = vt[:r].T * sv[:r] / np.sqrt(len(rows_c))
        mean[cols] = mean_c
    return mean, factors


def episode_accuracy(data, mean, factors, episode, k: int, rank: int, lam: float) -> float:
    p = np.zeros(rank)
    if k:
        items, votes = votes_of(data, episode.support_pool[:k])
        items, first = np.unique(items, return_index=True)
        x, y = factors[items, :rank], votes[first] - mean[items]
        p = np.linalg.solve(x.T @ x + lam * np.eye(rank), x.T @ y)
    score = mean + factors[:, :rank] @ p
    q = episode.query
    margin = score[data.item_a[q]] - score[data.item_b[q]]
    hit = np.where(margin == 0, 0.5, (margin > 0) == (data.label[q] == 1))
    return float(hit[data.label[q] != 0.5].mean())


def run(data, seed: int, n_users: int) -> dict:
    """``{"rank=..,lam=..": {k: {"accuracy", "gain_vs_k0"}}}`` on ``data``'s bench episodes for ``seed``."""
    if data.context is None or (data.context < 0).any():
        raise ValueError("headroom needs every comparison's conversation as its context")
    protocol = protocol_split(data, seed, max_unseen_users=n_users)  # the users plural bench scores
    split, scored = protocol.split, protocol.scored
    episodes = make_episodes(data, scored, mode="items", n_draws=3, random_state=seed)
    mean, factors = fit_factors(data, split.train, max(r for r, _ in GRID))
    out = {}
    for rank, lam in GRID:
        acc = {k: {(e.user, e.draw): episode_accuracy(data, mean, factors, e, k, rank, lam)
                   for e in episodes if k <= len(e.support_pool)} for k in DEFAULT_SHOTS}
        curve = {}
        for k in DEFAULT_SHOTS:
            if not acc[k]:  # no user's support reaches k
                continue
            per_user: dict[int, list[tuple[float, float]]] = {}
            for key, a in acc[k].items():
                per_user.setdefault(key[0], []).append((a, a - acc[0][key]))
            curve[k] = {"accuracy": float(np.mean([np.mean([a for a, _ in v]) for v in per_user.values()])),
                        "gain_vs_k0": float(np.mean([np.mean([g for _, g in v]) for v in per_user.values()]))}
        out[f"rank={rank},lam={lam}"] = curve
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--out", default="runs/polis_headroom.json")
    parser.add_argument("--data", default="polis", help="a bundled dataset whose contexts are conversations")
    args = parser.parse_args(argv)
    data = load_dataset(args.data)
    runs = [run(data, int(s), args.users) for s in args.seeds.split(",")]
    ks = [k for k in DEFAULT_SHOTS if all(k in curve for r in runs for curve in r.values())]
    table = {name: {k: {f: float(np.mean([r[name][k][f] for r in runs])) for f in ("accuracy", "gain_vs_k0")}
                    for k in ks} for name in runs[0]}
    print("paired gain over k=0 (accuracy %), mean over seeds " + args.seeds)
    print("setting        " + " ".join(f"{'k=' + str(k):>13s}" for k in ks))
    for name, curve in table.items():
        print(f"{name:14s} " + " ".join(f"{100 * c['accuracy']:6.1f} ({100 * c['gain_vs_k0']:+.1f})"
                                        for c in curve.values()))
    best = {k: max(table.values(), key=lambda c: c[k]["gain_vs_k0"])[k] for k in ks}
    print("best per k     " + " ".join(f"{100 * c['accuracy']:6.1f} ({100 * c['gain_vs_k0']:+.1f})"
                                       for c in best.values()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"seeds": args.seeds, "users": args.users, "table": table,
                                          "best_per_k": best}, indent=2))
    return {"table": table, "best_per_k": best}


if __name__ == "__main__":
    main()
