"""How wide ``adapt``'s prior should be: one model trained on the bench's split, scored on the bench's
item-disjoint episodes with its ``prior_scale`` set to each of 0.25, 0.5 (the default), 1 and 2, and
once more at 0.5 without tempering the support.

    python benchmarks/adapt_prior_scale.py --data polis --model low_rank --seed 0

The prior scale and ``temper_support`` are read at adaptation time, so one training serves every row.
Prints accuracy % and, in brackets, the paired gain over k=0 at each k (observation accuracy after
``o`` where the model learns from votes or ratings).
"""

from __future__ import annotations

import argparse

from apps.bench import BenchConfig, load_bench_dataset
from plural.core.model import make_model
from plural.data.splits import make_episodes
from plural.evaluation.fewshot import few_shot_curve
from plural.evaluation.protocol import protocol_split

SCALES = (0.25, 0.5, 1.0, 2.0)


def _row(curve: dict) -> str:
    return " ".join(f"k={r['k']}: {100 * r['accuracy']:.1f} ({100 * r.get('gain_vs_k0', 0):+.2f})"
                    + (f" o{100 * r['observation_accuracy']:.1f}" if "observation_accuracy" in r else "")
                    for r in curve["curve"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="polis")
    parser.add_argument("--model", default="low_rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args(argv)
    data = load_bench_dataset(args.data)
    config = BenchConfig()
    protocol = protocol_split(data, args.seed, max_unseen_users=args.users)
    episodes = make_episodes(data, protocol.scored, mode="items", n_draws=config.n_draws, random_state=args.seed)
    model = make_model(args.model)
    model.fit(data, train_rows=protocol.split.train, val_rows=protocol.split.val, max_epochs=config.max_epochs,
              batch_size=config.batch_size, random_state=args.seed, show_progress=False)
    print(f"{args.data}, {args.model}, seed {args.seed}, best epoch {model.fit_report_['best_epoch']}")
    default = model.config.prior_scale
    for scale in SCALES:
        model.config.prior_scale = scale
        print(f"prior_scale {scale}: {_row(few_shot_curve(model, data, episodes, config.ks))}", flush=True)
    model.config.prior_scale, model.config.temper_support = default, False
    print(f"prior_scale {default}, untempered support: {_row(few_shot_curve(model, data, episodes, config.ks))}")


if __name__ == "__main__":
    main()
