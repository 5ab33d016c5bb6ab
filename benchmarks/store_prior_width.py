"""How wide the store prior should be: ``personalize`` with the stored vectors as they are, with more
mass on the population component, and with the kernel mixture kept no wider than the population
prior (``match_spread``, the default), each against plain ``adapt`` on the bench's episodes.

    python benchmarks/store_prior_width.py --data movielens --seed 0 [--model low_rank]

One model is trained on the bench's split of the dataset (``plural bench`` defaults); every prior is
scored on the same unseen users' item-disjoint episodes (100 users, 3 draws), and the script prints
each prior's accuracy at every k and its difference from plain ``adapt`` (points).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from apps.bench import BenchConfig, load_bench_dataset
from plural.core.model import make_model
from plural.data.splits import make_episodes
from plural.evaluation.fewshot import few_shot_curve
from plural.evaluation.protocol import protocol_split
from plural.query.personalize import build_user_store, personalize

PRIORS = {
    "as stored": {"match_spread": False},
    "population mass 0.5": {"match_spread": False, "shrinkage": 0.5},
    "matched spread": {"match_spread": True},
    "matched spread, mass 0.5": {"match_spread": True, "shrinkage": 0.5},
}


def run(data_name: str, model_name: str = "low_rank", seed: int = 0, n_users: int = 100) -> dict:
    """``{prior: {k: accuracy}}``, with plain ``adapt`` as ``"adapt"``."""
    data = load_bench_dataset(data_name)
    config = BenchConfig()
    protocol = protocol_split(data, seed, max_unseen_users=n_users)
    episodes = make_episodes(data, protocol.scored, mode="items", n_draws=config.n_draws, random_state=seed)
    model = make_model(model_name)
    model.fit(data, train_rows=protocol.split.train, val_rows=protocol.split.val, max_epochs=config.max_epochs,
              batch_size=config.batch_size, random_state=seed, show_progress=False)
    store = build_user_store(model)
    curves = {"adapt": few_shot_curve(model, data, episodes, config.ks)}
    for name, options in PRIORS.items():
        curves[name] = few_shot_curve(model, data, episodes, config.ks, adapt_fn=lambda m, support, o=options:
                                      personalize(m, store, support, check_fingerprint=False, **o))
    return {name: {int(r["k"]): r["accuracy"] for r in c["curve"]} for name, c in curves.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="movielens")
    parser.add_argument("--model", default="low_rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the accuracies as JSON here")
    args = parser.parse_args(argv)
    result = run(args.data, args.model, args.seed, args.users)
    base = result["adapt"]
    ks = sorted(base)
    print(f"{args.data}, {args.model}, seed {args.seed}: accuracy % (minus plain adapt, points)")
    for name, acc in result.items():
        print(f"| {name} | " + " | ".join(f"k={k}: {100 * acc[k]:.1f} ({100 * (acc[k] - base[k]):+.2f})"
                                          for k in ks) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
