"""Responses in context: one item per (prompt, response), features [response, prompt, product]."""

from __future__ import annotations

import numpy as np
import pytest

from plural.data.container import PreferenceData
from plural.data.encoders import TextEncoder
from plural.data.prompts import (PROMPT_FEATURES, SEPARATOR, encode_in_context, is_prompt_aware,
                                 prompt_features, with_prompts)


@pytest.fixture
def data():
    texts = ["a short answer", "a long and careful answer", "a rude answer"]
    return PreferenceData.from_records(
        ["u", "u", "v", "v"], [texts[0], texts[0], texts[1], texts[2]], [texts[1], texts[1], texts[2], texts[0]],
        [1, 0, 1, 0], item_ids=texts, item_text=texts, contexts=["brief?", "explain!", "brief?", None],
        context_ids=["brief?", "explain!"], context_text=["brief?", "explain!"], name="toy")


def test_prompt_features_layout():
    r, p = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    np.testing.assert_array_equal(prompt_features(r, p), [[1, 2, 3, -1, 3, -2]])
    with pytest.raises(ValueError, match="one shape"):
        prompt_features(r, p[:, :1])


def test_with_prompts_makes_one_item_per_prompt_and_response(data, tmp_path):
    enc = TextEncoder(cache_dir=tmp_path)
    out = with_prompts(data, enc)
    ids = out.item_ids.tolist()
    assert len(ids) == len(set(ids)) == 7  # (brief, 0/1), (explain, 0/1), (brief, 1/2), (none, 2/0)
    a = [ids[i] for i in out.item_a]
    assert a[0] == f"brief?{SEPARATOR}a short answer" and a[1] == f"explain!{SEPARATOR}a short answer"
    assert a[3] == "a rude answer"  # no context: the bare id, a zero prompt block
    np.testing.assert_array_equal(out.label, data.label)
    d = enc.dim
    vec = enc.encode(["a short answer", "brief?", "explain!"])
    np.testing.assert_allclose(out.item_features[out.item_a[0]], np.concatenate([vec[0], vec[1], vec[0] * vec[1]]),
                               atol=1e-6)
    assert not np.allclose(out.item_features[out.item_a[0]], out.item_features[out.item_a[1]])
    np.testing.assert_array_equal(out.item_features[out.item_a[3], d:], 0)
    assert is_prompt_aware(out.meta["encoder"]) and out.meta["encoder"]["prompts"] == PROMPT_FEATURES
    # the same features at query time, from the recorded spec
    again = encode_in_context(out.meta["encoder"], ["a short answer", "a rude answer"], ["brief?", None],
                              encoder=TextEncoder(cache_dir=tmp_path))
    np.testing.assert_allclose(again, out.item_features[[out.item_a[0], out.item_a[3]]], atol=1e-6)


def test_fit_keeps_the_prompt_aware_spec(data, tmp_path):
    import plural

    out = with_prompts(data, TextEncoder(cache_dir=tmp_path))
    model = plural.fit(plural.make_model("bradley_terry"), out, max_epochs=1, show_progress=False)
    assert is_prompt_aware(model.encoder_spec_)
    path = plural.save_model(model, tmp_path / "m")
    assert is_prompt_aware(plural.load_model(path).encoder_spec_)


def test_bad_inputs(data):
    no_text = PreferenceData.from_records(["u"], ["a"], ["b"], [1])
    with pytest.raises(ValueError, match="need the responses' texts"):
        with_prompts(no_text)
    with pytest.raises(ValueError, match="no text encoder"):
        encode_in_context(None, ["x"])
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        encode_in_context({"model": TextEncoder().model_path, "prompts": PROMPT_FEATURES, "max_length": None,
                           "long_texts": "chunk", "normalize": True}, ["x"], ["p", "q"])
