"""What the synthetic mixture's training data allows: a learner told every user's true type.

    python benchmarks/synthetic_ceiling.py [--seeds 0,1,2] [--out runs/synthetic_ceiling.json]

The bench's few-shot oracle knows the four true type rewards; the models must learn them from the
seen users' training comparisons. This script measures how much that learning costs even for an
estimator with every advantage a model in the zoo lacks: it is told each training user's true type
and fits, per type, an L2-penalised logistic regression on the signed feature differences of that
type's training and validation comparisons: the correctly specified model (the true rewards are
linear in these features, with no bias). Its four fitted rewards then stand in for the true ones in
the few-shot oracle (``plural.data.synthetic.few_shot_oracle``: type posterior from the k support
labels, Bayes mixture on the query), on exactly the bench's unseen-user episodes.

The gap between this row and the few-shot oracle is what estimating the rewards from this much data
costs; a model that must also discover the types cannot be expected to beat it. The penalty is
picked per k on the scored users themselves, so the row is optimistic.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from apps.bench import bench_synthetic
from plural.data.splits import make_episodes
from plural.evaluation.protocol import protocol_split
from plural.data.synthetic import few_shot_oracle, type_oracle

KS = (0, 1, 2, 5, 10, 20, 50)
PENALTIES = (0.3, 1.0, 3.0, 10.0)  # sklearn's C: inverse L2 strength


def fit_type_rewards(data, rows: np.ndarray, user_type: np.ndarray, n_types: int, c: float) -> np.ndarray:
    """``(n_types, d)`` weights of one logistic regression per true type on ``rows``."""
    diff = data.item_features[data.item_a[rows]] - data.item_features[data.item_b[rows]]
    label, kind = data.label[rows], user_type[data.user[rows]]
    weights = []
    for t in range(n_types):
        keep = (kind == t) & (label != 0.5)
        model = LogisticRegression(C=c, fit_intercept=False, max_iter=2000).fit(diff[keep], label[keep] == 1)
        weights.append(model.coef_[0])
    return np.asarray(weights, dtype=np.float64)


def run(name: str, seed: int, n_users: int = 100, penalties=PENALTIES, ks=KS, quick: bool = False) -> dict:
    """``{"oracle": curve, "C=..": curve, ..., "oracle_accuracy", "seen_test": {"C=..": acc}}`` for one
    seed, each curve ``{k: accuracy}`` on the bench's item-disjoint episodes of that seed."""
    syn = bench_synthetic(name, quick=quick, random_state=seed)
    data = syn.data
    protocol = protocol_split(data, seed, max_unseen_users=n_users)  # the users plural bench scores
    split, scored = protocol.split, protocol.scored
    episodes = make_episodes(data, scored, mode="items", n_draws=3, random_state=seed)
    truth = type_oracle(syn)
    n_types = len(truth["shares"])
    out = {"oracle_accuracy": syn.oracle_accuracy(), "seen_test": {},
           "oracle": {r["k"]: r["accuracy"] for r in few_shot_oracle(data, episodes, ks, truth)}}
    rows = np.concatenate([split.train, split.val])
    test = split.test[data.label[split.test] != 0.5]
    for c in penalties:
        weights = fit_type_rewards(data, rows, syn.user_type, n_types, c)
        learned = dict(truth, weights=weights)
        out[f"C={c}"] = {r["k"]: r["accuracy"] for r in few_shot_oracle(data, episodes, ks, learned)}
        # seen users' test comparisons under their own type's fitted reward
        diff = data.item_features[data.item_a[test]] - data.item_features[data.item_b[test]]
        margin = np.einsum("nd,nd->n", diff, weights[syn.user_type[data.user[test]]])
        out["seen_test"][f"C={c}"] = float(((margin > 0) == (data.label[test] == 1)).mean())
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--data", default="synthetic_mixture", choices=("synthetic_mixture", "synthetic_noisy"))
    parser.add_argument("--out", default="runs/synthetic_ceiling.json")
    args = parser.parse_args(argv)
    runs = [run(args.data, int(s), args.users) for s in args.seeds.split(",")]
    names = ["oracle"] + [f"C={c}" for c in PENALTIES]
    ks = [k for k in KS if all(k in r[n] for r in runs for n in names)]
    table = {n: {k: float(np.mean([r[n][k] for r in runs])) for k in ks} for n in names}
    best = {k: max(table[n][k] for n in names[1:]) for k in ks}
    seen = {n: float(np.mean([r["seen_test"][n] for r in runs])) for n in names[1:]}
    full = float(np.mean([r["oracle_accuracy"] for r in runs]))
    print(f"{args.data}: unseen-user accuracy %, mean over seeds {args.seeds}; oracle (own true reward) "
          f"{100 * full:.1f}")
    print("row                       " + " ".join(f"{'k=' + str(k):>6s}" for k in ks) + "  seen test")
    rows = [("few-shot oracle (truth)", table["oracle"], None)] + \
           [(f"types told, LR {n}", table[n], seen[n]) for n in names[1:]] + [("types told, best per k", best, None)]
    for label, curve, s in rows:
        print(f"{label:25s} " + " ".join(f"{100 * curve[k]:6.1f}" for k in ks) +
              ("" if s is None else f"  {100 * s:9.1f}"))
    record = {"data": args.data, "seeds": args.seeds, "users": args.users, "oracle_accuracy": full,
              "table": table, "best_per_k": best, "seen_test": seen}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
