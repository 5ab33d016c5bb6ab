"""The service's support batch (built from catalog rows) is the batch ``plural.comparison_batch``
makes of ``PreferenceData.from_records`` of the same comparisons, tensor for tensor."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


def test_support_batch_equals_the_from_records_batch(tiny_run, cache_dir, monkeypatch):
    from apps.server import library

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    run = library.load_run(tiny_run)
    ids = [str(i) for i in run.data.item_ids]
    texts = {library.text_key(t): f for t, f in zip(["a new text", "another text"],
                                                     library.encode_texts(run, ["a new text", "another text"]))}
    keys = ids + list(texts)
    rng = random.Random(0)
    users = ["someone new", str(run.model.user_ids_[0])]
    for trial in range(40):
        n = rng.randint(1, 25)
        pairs = [rng.sample(keys, 2) for _ in range(n)]
        labels = [rng.choice((0.0, 0.5, 1.0)) for _ in range(n)]
        weights = [rng.choice((1.0, 0.25, 3.0)) for _ in range(n)]
        contexts = [None] * n if trial % 2 else [rng.choice((None, "c1", "c2")) for _ in range(n)]
        args = (run, users[trial % 2], [p[0] for p in pairs], [p[1] for p in pairs], labels, weights, contexts, texts)
        fast, slow = library.support_batch(*args), library.support_batch_from_records(*args)
        assert set(fast) == set(slow)
        for key in slow:
            assert fast[key].dtype == slow[key].dtype and fast[key].shape == slow[key].shape, key
            assert torch.equal(fast[key], slow[key]), key


def test_support_batch_refuses_an_item_compared_with_itself(tiny_run, cache_dir, monkeypatch):
    from apps.server import library

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    run = library.load_run(tiny_run)
    with pytest.raises(ValueError, match="with itself"):
        library.support_batch(run, "u", ["i1", "i1"], ["i2", "i1"], [1.0, 0.0], [1.0, 1.0], [None, None], {})


def test_writes_compute_inline_only_for_small_users_while_no_read_is_served(tiny_run, tmp_path, cache_dir,
                                                                           monkeypatch):
    import time

    from apps.server import library, service as service_module
    from apps.server.feedback import Row
    from apps.server.service import Service

    monkeypatch.setenv("PLURAL_CACHE_DIR", str(cache_dir))
    svc = Service(tiny_run, tmp_path / "state", run=library.load_run(tiny_run))
    svc.start(background=False)
    try:
        one = [Row("i1", "i2", None, None, 1.0)]
        assert svc._computes_inline("someone new", [], one)
        trained = str(svc.run.model.user_ids_[0])
        base = len(svc._base_rows(trained))
        assert 0 < base <= service_module.INLINE_COMPARISONS
        logged = one * (service_module.INLINE_COMPARISONS - base)
        assert svc._computes_inline(trained, logged, [])
        assert not svc._computes_inline(trained, logged, one)  # training + logged + new > INLINE_COMPARISONS
        assert not svc._computes_inline("someone new", one * service_module.INLINE_COMPARISONS, one)
        assert not svc._computes_inline("someone new", [], [Row(None, "i2", "a text", None, 1.0)])
        svc.reads_in_flight = 1
        assert not svc._computes_inline("someone new", [], one)
        svc.reads_in_flight, svc.last_read_at = 0, time.monotonic()
        assert not svc._computes_inline("someone new", [], one)
        svc.last_read_at -= service_module.READ_QUIET_S + 0.01
        assert svc._computes_inline("someone new", [], one)
    finally:
        svc.close()
