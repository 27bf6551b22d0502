"""The Flax backbone is numerically transformers' PyTorch model (tiny random checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import h2mt_jax
from conftest import make_tiny, torch_model

CASES = {
    "llama-untied": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-mha": ("llama", {"num_key_value_heads": 4}),
    "llama3-rope-scaling": ("llama", {"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}),
    "qwen2-bias": ("qwen2", {"tie_word_embeddings": True}),
    "qwen2-untied": ("qwen2", {"tie_word_embeddings": False, "num_key_value_heads": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    # Given a tiny random checkpoint saved by transformers
    kind, overrides = CASES[case]
    path = make_tiny(tmp_path, kind, **overrides)
    ref = torch_model(path)
    ids = np.random.default_rng(1).integers(0, 128, size=(2, 300))
    # When both frameworks compute logits
    ours = np.asarray(h2mt_jax.load_lm(path).logits(ids))
    with torch.no_grad():
        theirs = ref(torch.as_tensor(ids)).logits.numpy()
    # Then they agree to 1e-4 (and the logits are not trivially small)
    assert np.abs(theirs).max() > 0.5
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_bf16_close_to_fp32(tmp_path):
    path = make_tiny(tmp_path, "llama")
    ids = np.random.default_rng(2).integers(0, 128, size=(1, 64))
    f32 = np.asarray(h2mt_jax.load_lm(path).logits(ids))
    b16 = np.asarray(h2mt_jax.load_lm(path, dtype="bfloat16").logits(ids))
    assert np.abs(f32 - b16).max() < 0.1 * np.abs(f32).max()
    assert (f32.argmax(-1) == b16.argmax(-1)).mean() > 0.9
