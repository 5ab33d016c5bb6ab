"""A model's fingerprint: one digest of its name, config and weights, so a store, a service or a
saved artefact can tell which model it belongs to."""

from __future__ import annotations

import dataclasses
import hashlib
import json


def model_fingerprint(model) -> str:
    """A sha256 hex digest identifying a built ``plural.core.model.PreferenceModel`` and its weights.

    Hashes the model's name, its config (``dataclasses.asdict``), ``feature_dim_`` and every
    state-dict tensor's name, dtype, shape and bytes, so two differently trained models differ.
    The digest is cached on the model until a weight is replaced or changed (any in-place update
    bumps a tensor's version counter) or the config changes, so query-time checks stay cheap.
    """
    import torch

    header = json.dumps({"name": model.name, "config": dataclasses.asdict(model.config),
                         "feature_dim": model.feature_dim_}, sort_keys=True, default=repr)
    state = sorted(model.state_dict(keep_vars=True).items())
    versions = [t._version for _, t in state]
    cached = getattr(model, "_plural_fingerprint", None)
    # The cache holds the tensors themselves, so their memory cannot be reused by new weights.
    if (cached is not None and cached[0] == header and len(cached[1]) == len(state)
            and all(a is t and n == m for (n, t), (m, a) in zip(state, cached[1])) and cached[2] == versions):
        return cached[3]
    h = hashlib.sha256()
    h.update(header.encode())
    for name, tensor in state:
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"\0{name}\0{t.dtype}\0{tuple(tensor.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    object.__setattr__(model, "_plural_fingerprint", (header, [(n, t) for n, t in state], versions, digest))
    return digest
