"""GGUF loading: llama.cpp's Q/K row permutation is undone, quantized tensors dequantize."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import h2mt_jax
from conftest import make_tiny
from gguf_util import llama_cpp_permute, write_gguf
from h2mt_jax.backbone.config import UnsupportedModelError
from h2mt_jax.weights.gguf import unpermute_rows


def test_unpermute_inverts_permute(rng):
    w = rng.standard_normal((3 * 8, 5))
    # the library undoes llama.cpp's permutation (restated in the test, not the library's own)
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)
    # per head: rows (0, 1, 2, 3) of the pairs layout are HF's (0, 2, 1, 3) for head_dim 4
    rows = np.arange(4)[:, None].astype(float)
    np.testing.assert_array_equal(llama_cpp_permute(rows, 1)[:, 0], [0, 2, 1, 3])


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
    from h2mt_jax.weights import gguf as gguf_module

    monkeypatch.setattr(gguf_module, "read_gguf", lambda *a, **k: pytest.fail("cache missed"))
    cached = h2mt_jax.load_lm(path, tokenizer=False)  # served by the cache: the GGUF is not read
    np.testing.assert_allclose(np.asarray(cached.logits(ids)), from_hf, atol=1e-5)
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
