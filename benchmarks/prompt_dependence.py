"""Does the reward see the prompt? A semi-synthetic set where the preferred response depends on it.

Prompts ask about a topic either briefly ("In one sentence, ...") or in depth ("Explain ... step by
step"); responses on that topic are either short (one sentence) or long (several). Two kinds of
comparison, each half of a user's rows:

- *length* pairs (prompt-dependent): a short against a long response. Most users (type A, 60%)
  want the short one to a brief prompt and the long one to an in-depth prompt; type B users want
  the reverse. Averaged over prompts every user wants short and long equally often, so a reward
  that ignores the prompt can do no better than chance here, personalized or not.
- *tone* pairs (prompt-independent): a polite against a rude response of the same length;
  everyone prefers polite, 90% of the time.

Both variants train the same models on the same rows: *prompt-blind* items are the responses'
MiniLM embeddings; *prompt-aware* items are responses in context
(``plural.data.prompts.with_prompts``). The split is the protocol's item-disjoint split of the
prompt-aware items (a prompt-blind test response may have been seen under another prompt, which
can only help it). Reported, on each kind of pair, for ``--seeds`` seeds: seen users' test accuracy
(their learned states), and unseen users' few-shot accuracy (``plural.few_shot_curve``: item-disjoint
support and query, one draw per user) at k=0 (the population reward: about 59% is the best a
population reward can do on length pairs, since 60% of users are type A) and at k=5 and k=10
comparisons of support (``model.adapt``).

    .venv/bin/python benchmarks/prompt_dependence.py --seeds 0,1,2 --out prompt_dependence.json

``--write-trl rows.jsonl`` writes seed 0's comparisons as TRL rows (``prompt``, ``chosen``,
``rejected``, ``user_id``) and stops, for ``plural bench --data rows.jsonl,rows.jsonl+prompts --kind trl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOPICS = ["volcanoes", "the stock market", "photosynthesis", "chess openings", "jazz", "the moon landing",
          "sourdough bread", "black holes", "the french revolution", "machine learning", "bees", "tides"]
BRIEF = ["In one sentence, what is {t}?", "Quick question: {t}, in a few words?", "Briefly, tell me about {t}.",
         "Give me a one-line answer: what about {t}?"]
DEEP = ["Explain {t} in depth, step by step, with examples.", "I want a thorough, detailed explanation of {t}.",
        "Walk me through {t} carefully and completely.", "Teach me everything important about {t}, in detail."]
SHORT = ["{T} is a well known subject with a simple core idea.", "In short: {t} comes down to one key idea.",
         "{T}, put simply, is easy to summarise."]
LONG = ["{T} has a long history. First, the basic idea is simple. Second, there are several details worth "
        "knowing. Third, experts still debate some of them. Finally, here is an example that shows how "
        "it works in practice, and what to read next.",
        "Let us go through {t} step by step. We start with the definition. Then we look at the main "
        "mechanisms, one at a time. After that come common misconceptions, and two worked examples. "
        "To finish, a summary of what matters most.",
        "There is a lot to say about {t}. The background matters, because it explains the rest. The "
        "central mechanism has three parts, each with its own subtleties. Real cases show the ideas at "
        "work, and the open questions show where they stop."]
RUDE = ["Ugh, {t}? Look it up yourself, it is obvious.", "Whatever. {T} is boring and so is this question.",
        "Not my problem. {T} is something you should already know."]


def make_data(seed: int, n_users: int = 150, per_user: int = 40):
    """The comparisons, with ``meta["part"]`` marking each row ``length`` or ``tone``."""
    from plural.data.container import PreferenceData

    rng = np.random.default_rng(seed)
    rows, parts = [], []
    types = rng.random(n_users) < 0.6  # True: type A
    for u in range(n_users):
        for j in range(per_user):
            t = TOPICS[rng.integers(len(TOPICS))]
            deep = bool(rng.integers(2))
            prompt = (DEEP if deep else BRIEF)[rng.integers(4)].format(t=t)
            fill = {"t": t, "T": t[0].upper() + t[1:]}
            if j % 2 == 0:  # length pair: prompt-dependent
                short, long = SHORT[rng.integers(3)].format(**fill), LONG[rng.integers(3)].format(**fill)
                wants_long = deep if types[u] else not deep
                p_first = 0.95 if wants_long else 0.05
                a, b, part = long, short, "length"
            else:  # tone pair: polite beats rude whatever the prompt
                polite = (SHORT if rng.integers(2) else LONG)[rng.integers(3)].format(**fill)
                a, b, part = polite, RUDE[rng.integers(3)].format(**fill), "tone"
                p_first = 0.9
            label = float(rng.random() < p_first)
            if rng.integers(2):  # shuffle sides
                a, b, label = b, a, 1.0 - label
            rows.append((f"user{u}", a, b, label, prompt))
            parts.append(part)
    texts = sorted({r[1] for r in rows} | {r[2] for r in rows})
    prompts = sorted({r[4] for r in rows})
    data = PreferenceData.from_records(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        item_ids=texts, item_text=texts, contexts=[r[4] for r in rows], context_ids=prompts,
        context_text=prompts, name=f"prompt_dependence(seed={seed})")
    data.meta["split_mode"] = "items"
    return data, np.asarray(parts)


KS = (0, 5, 10)


def few_shot_by_part(model, data, episodes, parts: np.ndarray) -> dict:
    """``{"k=0": {"length": .., "tone": ..}, ...}``: unseen users' query accuracy (%) at each k in
    :data:`KS`, the query cut to one kind of pair (the support is drawn from both kinds)."""
    import dataclasses

    from plural.evaluation.fewshot import curve_value, few_shot_curve

    out = {f"k={k}": {} for k in KS}
    for part in ("length", "tone"):
        cut = [dataclasses.replace(ep, query=ep.query[parts[ep.query] == part]) for ep in episodes]
        result = few_shot_curve(model, data, [ep for ep in cut if len(ep.query)], ks=KS)
        for k in KS:
            out[f"k={k}"][part] = round(100 * curve_value(result, k), 2)
    return out


def accuracy_by_part(model, data, rows: np.ndarray, parts: np.ndarray) -> dict:
    from plural.evaluation.metrics import evaluate

    return {part: round(100 * evaluate(model, data, rows[parts[rows] == part])["accuracy"], 2)
            for part in ("length", "tone")}


def run(seed: int, models: list[str], max_epochs: int | None, early_stopping: bool = True) -> dict:
    import plural
    from plural.data.encoders import TextEncoder, ensure_features
    from plural.data.prompts import with_prompts
    from plural.data.splits import make_episodes
    from plural.evaluation.protocol import protocol_split

    raw, parts = make_data(seed)
    encoder = TextEncoder()
    variants = {"prompt_blind": ensure_features(raw, encoder), "prompt_aware": with_prompts(raw, encoder)}
    protocol = protocol_split(variants["prompt_aware"], seed)
    split = protocol.split
    episodes = make_episodes(variants["prompt_aware"], protocol.unseen, mode="items", n_draws=1,
                             random_state=seed)
    out = {}
    for name in models:
        for variant, data in variants.items():
            start = time.perf_counter()
            model = plural.make_model(name)
            plural.fit(model, data, train_rows=split.train,
                       val_rows=split.val if early_stopping else np.empty(0, np.int64), max_epochs=max_epochs,
                       random_state=seed, show_progress=False)
            out[f"{name}/{variant}"] = {"seen_test": accuracy_by_part(model, data, split.test, parts),
                                        **few_shot_by_part(model, data, episodes, parts),
                                        "best_epoch": model.fit_report_["best_epoch"],
                                        "seconds": round(time.perf_counter() - start, 1)}
            print(f"seed {seed} {name:14s} {variant:13s} {out[f'{name}/{variant}']}", flush=True)
    return out


def write_trl(path: Path, seed: int = 0) -> int:
    """Write seed ``seed``'s comparisons as TRL rows (the preferred response is ``chosen``); returns
    the number of rows."""
    raw, _ = make_data(seed)
    with open(path, "w", encoding="utf-8") as f:
        for u, a, b, label, c in zip(raw.user, raw.item_a, raw.item_b, raw.label, raw.context):
            chosen, rejected = (a, b) if label == 1.0 else (b, a)
            f.write(json.dumps({"prompt": str(raw.context_text[c]), "chosen": str(raw.item_text[chosen]),
                                "rejected": str(raw.item_text[rejected]), "user_id": str(raw.user_ids[u])}) + "\n")
    return len(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="bradley_terry,low_rank")
    parser.add_argument("--max-epochs", type=int, default=None, help="default: plural.fit's (enough for its min_steps)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-early-stopping", action="store_true", help="train every epoch (no validation rows)")
    parser.add_argument("--write-trl", type=Path, default=None, help="write seed 0 as TRL rows (jsonl) and stop")
    args = parser.parse_args()
    if args.write_trl:
        print(f"wrote {write_trl(args.write_trl)} TRL rows to {args.write_trl}")
        return
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    per_seed = {seed: run(seed, models, args.max_epochs, not args.no_early_stopping) for seed in seeds}
    summary, wheres = {}, ("seen_test",) + tuple(f"k={k}" for k in KS)
    for key in per_seed[seeds[0]]:
        summary[key] = {where: {part: round(float(np.mean([per_seed[s][key][where][part] for s in seeds])), 2)
                                for part in ("length", "tone")} for where in wheres}
    print("\nmean over seeds", seeds, "(accuracy %, length pairs are the prompt-dependent part)")
    print(f"{'model/variant':28s}" + "".join(f" {w + ' ' + p:>15s}" for w in wheres for p in ("length", "tone")))
    for key, row in summary.items():
        print(f"{key:28s}" + "".join(f" {row[w][p]:15.2f}" for w in wheres for p in ("length", "tone")))
    if args.out:
        args.out.write_text(json.dumps({"seeds": seeds, "per_seed": per_seed, "mean": summary}, indent=2))


if __name__ == "__main__":
    main()
