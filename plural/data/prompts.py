"""Prompt-aware items: a response is judged under its prompt, so the reward is ``r_u(prompt, response)``.

:func:`with_prompts` turns comparisons whose contexts are prompts into comparisons of
*responses in context*: one item per distinct ``(prompt, response)`` that a comparison uses, with
the features :func:`prompt_features` makes from the two embeddings,
``[response, prompt, response * prompt]``. Every model of the zoo then learns a reward of the
prompt and the response without knowing it: the product block lets even a linear head weigh a
response's directions by the prompt (a diagonal bilinear form), and the item MLPs of the latent
models combine all three blocks freely. Within a comparison both responses share the prompt, so
what the prompt says alone cancels in the margin; what counts is how it changes the responses'
rewards.

A comparison with no context gets a zero prompt block, which is also how a prompt-aware model
scores a response with no prompt. The encoder's spec, with ``"prompts": PROMPT_FEATURES``, is kept
in ``meta["encoder"]``; :func:`plural.fit` copies it to the model (``encoder_spec_``), so a saved
model says how to embed a prompt and a response at query time (:func:`encode_in_context`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plural.data.container import PreferenceData

PROMPT_FEATURES = "response|prompt|response*prompt"
"""The layout of a prompt-aware item's features (recorded in the encoder spec)."""

SEPARATOR = "\x1f"  # between a context id and an item id in a response-in-context id


def prompt_features(responses: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """``(n, 3d)`` features of responses ``(n, d)`` under prompts ``(n, d)`` (zero rows: no prompt)."""
    responses = np.asarray(responses, dtype=np.float32)
    prompts = np.asarray(prompts, dtype=np.float32)
    if responses.ndim != 2 or responses.shape != prompts.shape:
        raise ValueError(f"responses and prompts must be (n, d) arrays of one shape, got "
                         f"{responses.shape} and {prompts.shape}")
    return np.ascontiguousarray(np.concatenate([responses, prompts, responses * prompts], axis=1))


def is_prompt_aware(spec: dict | None) -> bool:
    """Whether an encoder spec (a model's ``encoder_spec_``) describes prompt-aware features."""
    return isinstance(spec, dict) and spec.get("prompts") == PROMPT_FEATURES


def with_prompts(data: PreferenceData, encoder=None) -> PreferenceData:
    """``data`` with one item per ``(prompt, response)`` its comparisons use (see the module docstring).

    Item ids are ``context_id + "\\x1f" + item_id`` (the bare item id where a comparison has no
    context); ``item_text`` keeps the response's text; contexts are kept as they are.

    Args:
        data: comparisons with item texts and, for the prompt-aware part, contexts with texts
            (``from_trl`` keeps prompts so).
        encoder: a :class:`plural.data.encoders.TextEncoder` (default: ``TextEncoder()``).

    Raises:
        ValueError: items or contexts have no texts.
    """
    from plural.data.encoders import TextEncoder

    if data.item_text is None:
        raise ValueError(f"{data.name}: prompt-aware items need the responses' texts (item_text is None)")
    has_context = data.context is not None and data.context_ids is not None and (data.context >= 0).any()
    if has_context and data.context_text is None:
        raise ValueError(f"{data.name}: contexts have ids but no texts; prompt-aware items embed the prompts")
    encoder = TextEncoder() if encoder is None else encoder
    if not isinstance(encoder, TextEncoder):
        raise ValueError("prompt-aware items embed texts: pass a TextEncoder")
    long_before = encoder.n_long_  # the counter is cumulative over the encoder's life
    context = data.context if data.context is not None else np.full(len(data), -1, np.int64)
    pairs = np.concatenate([np.stack([context, data.item_a], 1), np.stack([context, data.item_b], 1)])
    distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    responses = encoder.encode(list(data.item_text))
    prompts = np.zeros((len(distinct), responses.shape[1]), np.float32)
    if has_context:
        prompt_vectors = encoder.encode(list(data.context_text))
        known = distinct[:, 0] >= 0
        prompts[known] = prompt_vectors[distinct[known, 0]]
    features = prompt_features(responses[distinct[:, 1]], prompts)
    ids = [str(data.item_ids[i]) if c < 0 else f"{data.context_ids[c]}{SEPARATOR}{data.item_ids[i]}"
           for c, i in distinct.tolist()]
    meta = dict(data.meta)
    meta["encoder"] = {**encoder.spec, "prompts": PROMPT_FEATURES}
    meta["n_long_texts"] = int(encoder.n_long_ - long_before)
    n = len(data)
    return PreferenceData(
        user_ids=data.user_ids, item_ids=np.asarray(ids, dtype=object), user=data.user,
        item_a=inverse[:n], item_b=inverse[n:], label=data.label, weight=data.weight, context=data.context,
        item_text=data.item_text[distinct[:, 1]], item_features=features, context_ids=data.context_ids,
        context_text=data.context_text, name=data.name, meta=meta,
        observations=_observations_in_context(data.observations, distinct))


def _observations_in_context(obs, distinct: np.ndarray):
    """``obs`` on the prompt-aware items ``distinct`` (``(context, item)`` rows): an observation of an
    item in a context is one of that (prompt, response) item; one whose pair no comparison uses
    follows no comparison and is left out."""
    if obs is None:
        return None
    index = {(int(c), int(i)): row for row, (c, i) in enumerate(distinct.tolist())}
    item = np.array([index.get((int(c), int(i)), -1) for c, i in zip(obs.context, obs.item)], dtype=np.int64)
    kept = obs.take(np.flatnonzero(item >= 0))
    kept.item = item[item >= 0]
    return kept


def encode_in_context(spec: dict, responses: Sequence[str], prompts: Sequence[str | None] | None = None,
                      encoder=None) -> np.ndarray:
    """Features of ``responses`` under ``prompts`` (None: no prompt) as a model with encoder ``spec``
    was trained on them: the bare embeddings, or :func:`prompt_features` for a prompt-aware model.

    ``encoder`` (default: rebuilt from ``spec``) must match the spec
    (:func:`plural.data.encoders.check_encoder`)."""
    from plural.data.encoders import resolve_encoder

    encoder = resolve_encoder(spec, encoder)
    if encoder is None:
        raise ValueError("the model records no text encoder: it was trained on features, not texts")
    responses = list(responses)
    prompts = [None] * len(responses) if prompts is None else list(prompts)
    if len(prompts) != len(responses):  # before any text is embedded
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    vectors = encoder.encode(responses)
    if not is_prompt_aware(spec):
        return vectors
    given = [k for k, p in enumerate(prompts) if p is not None]
    prompt_vectors = np.zeros_like(vectors)
    if given:
        prompt_vectors[given] = encoder.encode([prompts[k] for k in given])
    return prompt_features(vectors, prompt_vectors)


def embed_as_trained(data: PreferenceData, spec: dict | None, encoder=None):
    """``(data with item features, encoder)`` as a model with encoder ``spec`` (its ``encoder_spec_``)
    was trained on it: :func:`with_prompts` for a prompt-aware spec; otherwise texts embedded by
    ``ensure_features`` with the recorded encoder (the default ``TextEncoder`` for a spec of None) and
    features of the data's own kept. The encoder is None when nothing was embedded. ``encoder`` must
    match the spec (:func:`plural.data.encoders.check_encoder`)."""
    from plural.data.encoders import TextEncoder, ensure_features, resolve_encoder

    if is_prompt_aware(spec):
        encoder = resolve_encoder(spec, encoder)
        return with_prompts(data, encoder), encoder
    if data.item_features is not None:
        return data, None
    encoder = resolve_encoder(spec, encoder) or TextEncoder()
    return ensure_features(data, encoder), encoder


__all__ = ["PROMPT_FEATURES", "embed_as_trained", "encode_in_context", "is_prompt_aware", "prompt_features",
           "with_prompts"]
