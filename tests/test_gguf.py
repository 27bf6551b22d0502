"""GGUF loading: llama.cpp's Q/K row permutation is undone, quantized tensors dequantize."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import h2mt_jax
from conftest import make_tiny
from gguf_util import write_gguf
from h2mt_jax.backbone.config import UnsupportedModelError
from h2mt_jax.weights.gguf import permute_rows, unpermute_rows


def test_unpermute_inverts_permute(rng):
    w = rng.standard_normal((3 * 8, 5))
    np.testing.assert_array_equal(unpermute_rows(permute_rows(w, 3), 3), w)
    assert not np.array_equal(permute_rows(w, 3), w)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_f32_gguf_equals_safetensors(tmp_path, kind, monkeypatch):
    # Given the same tiny model as safetensors and as a llama.cpp-style GGUF
    monkeypatch.setenv("H2MT_JAX_CACHE", str(tmp_path / "cache"))
    hf = make_tiny(tmp_path, kind, tie_word_embeddings=(kind == "qwen2"))
    path = tmp_path / "tiny.gguf"
    write_gguf(hf, path)
    ids = np.random.default_rng(0).integers(0, 128, size=(1, 40))
    # When both are loaded
    from_hf = np.asarray(h2mt_jax.load_lm(hf).logits(ids))
    lm = h2mt_jax.load_lm(path, tokenizer=False)
    # Then the logits agree, also on the second (cached) load
    np.testing.assert_allclose(np.asarray(lm.logits(ids)), from_hf, atol=1e-5)
    assert lm.config.tie_word_embeddings == (kind == "qwen2")
    assert lm.config.attention_bias == (kind == "qwen2")
    again = h2mt_jax.load_lm(path, tokenizer=False)
    np.testing.assert_allclose(np.asarray(again.logits(ids)), from_hf, atol=1e-5)


def test_q8_gguf_close(tmp_path, monkeypatch):
    monkeypatch.setenv("H2MT_JAX_CACHE", str(tmp_path / "cache"))
    hf = make_tiny(tmp_path, "llama")
    path = tmp_path / "tiny-q8.gguf"
    write_gguf(hf, path, quant=gguf.GGMLQuantizationType.Q8_0)
    ids = np.random.default_rng(0).integers(0, 128, size=(1, 40))
    ref = np.asarray(h2mt_jax.load_lm(hf).logits(ids))
    q8 = np.asarray(h2mt_jax.load_lm(path, tokenizer=False).logits(ids))
    assert np.abs(q8 - ref).max() < 0.05 * np.abs(ref).max()


def test_unsupported_architecture_is_named(tmp_path):
    hf = make_tiny(tmp_path, "llama")
    path = tmp_path / "mamba.gguf"
    write_gguf(hf, path, arch="mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba'.*supported"):
        h2mt_jax.load_lm(path, tokenizer=False)
