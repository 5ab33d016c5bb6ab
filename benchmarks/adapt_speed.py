"""Adaptation speed: Newton/Laplace ``adapt`` against fitting the same user vector with 500 Adam steps
(what reference implementations do), on the same model, users and support, measured in one run.

    python benchmarks/adapt_speed.py [--model low_rank] [--k 10] [--users 200] [--out runs/adapt_speed.json]

Data: the benchmark's synthetic mixture (4 types, 400 users, 2000 items, 384-d). Both procedures
minimise the same objective (support negative log-likelihood plus the model's Gaussian prior) and
are scored on the same item-disjoint query comparisons.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from plural.core.batch import comparison_batch
from apps.bench import load_bench_dataset
from plural.data.splits import make_episodes
from plural.evaluation.protocol import protocol_split
from plural.evaluation.metrics import pairwise_accuracy
from plural.core.latent import inference
from plural.core.model import UserState, make_model


def adam_adapt(model, support: dict, steps: int = 500, lr: float = 0.05) -> UserState:
    """The gradient-descent baseline: Adam on the user vector, everything else frozen."""
    mean, cov = model.prior()
    precision = torch.linalg.inv(cov).float()
    mean = mean.float()
    with inference(model):
        fn = model.support_margins(support)
    u = torch.zeros(model.user_dim, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    label, weight = support["label"], support["weight"]
    for _ in range(steps):
        opt.zero_grad()
        m, _ = fn(u.double())
        m = m.float()
        nll = (weight * torch.nn.functional.binary_cross_entropy_with_logits(m, label, reduction="none")).sum()
        d = u - mean
        loss = nll + 0.5 * d @ precision @ d
        loss.backward()
        opt.step()
    return UserState(vector=u.detach(), n_comparisons=len(label))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="low_rank")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/adapt_speed.json"))
    args = parser.parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)

    data = load_bench_dataset("synthetic_mixture")
    protocol = protocol_split(data, 0, mode="items")
    split, unseen = protocol.split, protocol.unseen
    model = make_model(args.model).fit(data, train_rows=split.train, val_rows=split.val, max_epochs=20,
                                       batch_size=512, show_progress=False)
    episodes = [e for e in make_episodes(data, unseen, n_draws=1, random_state=0)
                if len(e.support_pool) >= args.k][: args.users]
    results = {"newton": {"ms": [], "acc": []}, "adam500": {"ms": [], "acc": []}}
    for ep in episodes:
        support = comparison_batch(data, ep.support(args.k), model)
        query = comparison_batch(data, ep.query, model)
        for name, fn in (("newton", model.adapt), ("adam500", lambda s: adam_adapt(model, s))):
            start = time.perf_counter()
            state = fn(support)
            results[name]["ms"].append(1e3 * (time.perf_counter() - start))
            with torch.no_grad():
                p = torch.sigmoid(model.state_margin(query, state)).numpy()
            results[name]["acc"].append(pairwise_accuracy(p, data.label[ep.query]))
    summary = {name: {"median_ms": float(np.median(r["ms"])), "p99_ms": float(np.percentile(r["ms"], 99)),
                      "accuracy": float(np.mean(r["acc"]))} for name, r in results.items()}
    summary["speedup_median"] = summary["adam500"]["median_ms"] / summary["newton"]["median_ms"]
    summary.update(model=args.model, k=args.k, n_users=len(episodes), torch_threads=torch.get_num_threads())
    for name in ("newton", "adam500"):
        s = summary[name]
        print(f"{name:8s} median {s['median_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  accuracy {100 * s['accuracy']:.1f}%")
    print(f"speed-up (median): {summary['speedup_median']:.0f}x over {len(episodes)} users at k={args.k}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
