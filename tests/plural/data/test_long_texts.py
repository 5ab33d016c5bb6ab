"""Texts longer than the encoder reads: chunked and pooled, truncated with a warning, or refused;
the encoder's spec travels with a trained model's checkpoint and is checked where it is used."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from plural.data import encoders
from plural.data.encoders import (TextEncoder, check_encoder, default_model_path, encoder_from_spec,
                                  resolve_encoder)

BASE = " ".join(f"word{i % 50} is here" for i in range(100))  # about 400 tokens
HAPPY, SAD = BASE + " and the ending is joyful", BASE + " and the ending is tragic"


@pytest.fixture(scope="module")
def minilm():
    return encoders._load_sentence_transformer(default_model_path(), "cpu")


@pytest.fixture
def shared(minilm, monkeypatch):
    """Every TextEncoder gets the module's MiniLM (its token limit restored afterwards)."""
    limit = minilm.max_seq_length
    monkeypatch.setattr(encoders, "_load_sentence_transformer", lambda path, device: minilm)
    yield minilm
    minilm.max_seq_length = limit


def test_the_two_texts_are_longer_than_minilm_reads(shared):
    assert len(shared.tokenizer(HAPPY)["input_ids"]) > shared.max_seq_length == 256


def test_truncation_makes_texts_that_differ_at_the_end_identical_and_says_so(tmp_path, shared, caplog):
    enc = TextEncoder(cache_dir=tmp_path, long_texts="truncate")
    with caplog.at_level(logging.WARNING, logger="plural.data.encoders"):
        happy, sad, short = enc.encode([HAPPY, SAD, "a short text"])
    np.testing.assert_array_equal(happy, sad)
    assert enc.n_long_ == 2
    assert "2 of 3 texts are longer than max_length=256" in caplog.text


def test_chunking_embeds_every_token(tmp_path, shared):
    enc = TextEncoder(cache_dir=tmp_path)  # chunk is the default
    happy, sad, short = enc.encode([HAPPY, SAD, "a short text"])
    assert enc.n_long_ == 2
    assert np.abs(happy - sad).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm([happy, sad, short], axis=1), 1, atol=1e-5)
    # a short text is embedded as sentence-transformers embeds it
    np.testing.assert_allclose(short, shared.encode(["a short text"], normalize_embeddings=True)[0], atol=1e-5)
    # the pooled vector is the token-weighted mean of the windows' vectors
    ids = shared.tokenizer(HAPPY, add_special_tokens=False)["input_ids"]
    room = 254
    windows = [shared.tokenizer.decode(ids[i:i + room]) for i in range(0, len(ids), room)]
    parts = shared.encode(windows, normalize_embeddings=False)
    assert happy @ (parts.mean(0) / np.linalg.norm(parts.mean(0))) > 0.99


def test_error_mode_names_the_text(tmp_path, shared):
    with pytest.raises(ValueError, match="text at position 1 has more than max_length=256"):
        TextEncoder(cache_dir=tmp_path, long_texts="error").encode(["short", HAPPY])


def test_max_length_is_explicit_and_checked(tmp_path, shared):
    enc = TextEncoder(cache_dir=tmp_path, max_length=512, long_texts="error")
    happy, sad = enc.encode([HAPPY, SAD])  # fits in 512: read whole, nothing long
    assert enc.n_long_ == 0 and np.abs(happy - sad).max() > 1e-3
    with pytest.raises(ValueError, match="exceeds what .* can read \\(512 positions\\)"):
        TextEncoder(cache_dir=tmp_path, max_length=600).encode(["x"])
    for bad in (0, 3, 2.5, "256"):
        with pytest.raises(ValueError, match="max_length"):
            TextEncoder(max_length=bad)
    with pytest.raises(ValueError, match="long_texts"):
        TextEncoder(long_texts="drop")


def test_settings_do_not_share_cached_vectors(tmp_path, shared):
    truncated = TextEncoder(cache_dir=tmp_path, long_texts="truncate").encode([HAPPY, SAD])
    chunked = TextEncoder(cache_dir=tmp_path, long_texts="chunk").encode([HAPPY, SAD])
    assert np.abs(chunked[0] - chunked[1]).max() > 1e-3
    np.testing.assert_array_equal(truncated[0], truncated[1])


def test_cache_off_writes_nothing(tmp_path, shared):
    enc = TextEncoder(cache_dir=tmp_path, cache=False)
    enc.encode(["one", "two"])
    enc.encode(["one"])
    assert enc.n_embedded_ == 3 and enc.n_cache_hits_ == 0
    assert not enc.cache_path.exists()


def test_a_bounded_cache_keeps_at_most_its_bound_and_the_latest_batch(tmp_path, shared):
    from plural.data.embedding_cache import EmbeddingCache

    enc = TextEncoder(cache_dir=tmp_path, cache=3)
    first = enc.encode(["one", "two", "three"])
    assert len(EmbeddingCache(enc.cache_path, enc.model_path)) == 3
    enc.encode(["four", "five"])
    store = EmbeddingCache(enc.cache_path, enc.model_path)
    assert len(store) == 3
    latest = store.get([enc._key(t) for t in ("four", "five")])
    assert len(latest) == 2  # what was just written stays; two older vectors went
    again = TextEncoder(cache_dir=tmp_path, cache=3).encode(["one", "two", "three"])
    np.testing.assert_allclose(again, first, atol=1e-6)  # evicted texts are embedded again, the same
    with pytest.raises(ValueError, match="cache must be"):
        TextEncoder(cache=0)


def test_spec_round_trip_and_mismatch(tmp_path):
    enc = TextEncoder(cache_dir=tmp_path, max_length=128, long_texts="truncate")
    again = encoder_from_spec(enc.spec)
    assert again.spec == enc.spec
    check_encoder(enc.spec, again)
    with pytest.raises(ValueError, match="max_length \\(256, trained with 128\\)"):
        check_encoder(enc.spec, TextEncoder(max_length=256, long_texts="truncate"))
    with pytest.raises(ValueError, match="long_texts"):
        resolve_encoder(enc.spec, TextEncoder(max_length=128))
    assert resolve_encoder(None, None) is None
    with pytest.raises(ValueError, match="not an encoder spec"):
        encoder_from_spec({"max_length": 3})


def test_checkpoint_records_the_encoder_and_eval_refuses_another(tmp_path, shared):
    import pandas as pd

    import plural
    from plural.training.runs import evaluate_run, train_run

    rng = np.random.default_rng(0)
    texts = [f"a reply about topic {i % 5}, number {i}" for i in range(30)] + [HAPPY, SAD]
    rows = []
    for u in range(8):
        for _ in range(25):
            a, b = rng.choice(len(texts), 2, replace=False)
            chosen, rejected = (texts[a], texts[b]) if a > b else (texts[b], texts[a])
            rows.append((f"u{u}", "which reply is better?", chosen, rejected))
    path = tmp_path / "pairs.jsonl"
    pd.DataFrame(rows, columns=["user_id", "prompt", "chosen", "rejected"]).to_json(path, orient="records",
                                                                                   lines=True)
    encoder = TextEncoder(cache_dir=tmp_path / "cache", max_length=128)
    record = train_run(str(path), "bradley_terry", tmp_path / "run", max_epochs=1, show_progress=False,
                       encoder=encoder, read_options={"kind": "trl"})
    assert record["fit_report"]["encoder"] == encoder.spec
    assert record["fit_report"]["n_long_texts"] >= 2  # the two long replies, chunked at 128 tokens
    model = plural.load_model(tmp_path / "run")
    assert model.encoder_spec_ == encoder.spec
    assert evaluate_run(tmp_path / "run")["results"]["seen_test"]["n"] > 0  # the model's own encoder
    with pytest.raises(ValueError, match="max_length"):
        evaluate_run(tmp_path / "run", encoder=TextEncoder(cache_dir=tmp_path / "cache"))
