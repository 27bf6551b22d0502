"""H²MT answers from stored KV caches (`answer_from="leaf_kv"` / `"memory_kv"`): exactness against
transformers' PyTorch forward with the layout's attention mask, storage dtypes, save/load,
append, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import h2mt_jax
from conftest import make_tiny, tiny_lm_with, torch_model
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.generation.kv_prompt import prefill_with_segment
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.leaf_kv import LeafKV, quantize_int8
from h2mt_jax.hierarchy.memory import init_params, leaf_memories
from h2mt_jax.shapes import bucket


def _segment_logits(lm, pre, seg_k, seg_v, post):
    import jax.numpy as jnp

    tp, tq, ts = bucket(len(pre)), bucket(len(post)), bucket(seg_k.shape[1])
    pad = lambda ids, t: np.asarray([ids + [0] * (t - len(ids))], np.int32)  # noqa: E731
    k = np.zeros((seg_k.shape[0], ts) + seg_k.shape[2:], np.float32)
    v = np.zeros_like(k)
    k[:, :seg_k.shape[1]], v[:, :seg_k.shape[1]] = seg_k, seg_v
    logits, _ = prefill_with_segment(lm.graphdef, lm.params, jnp.asarray(pad(pre, tp)),
                                     jnp.int32(len(pre)), jnp.asarray(k), jnp.asarray(v),
                                     jnp.int32(seg_k.shape[1]), jnp.asarray(pad(post, tq)),
                                     jnp.int32(len(post)), bucket(tp + ts + tq + 8))
    return np.asarray(logits)[0]


def _tiny_leaves(tmp_path, leaves):
    """A tiny Llama (as transformers' directory and as our LM), a 16-token leaf config with m=2,
    fresh memory parameters and the leaves padded into `[n, 16]` tokens."""
    hf = make_tiny(tmp_path, "llama", max_position_embeddings=256)
    lm = h2mt_jax.load_lm(hf, tokenizer=False)
    cfg = H2MTConfig(build=BuildConfig(leaf_tokens=16, title_tokens=0), mem_tokens=2)
    params = init_params(lm.config.hidden_size, 0.02, cfg, __import__("jax").random.PRNGKey(0))
    tokens = np.zeros((len(leaves), 16), np.int32)
    for i, t in enumerate(leaves):
        tokens[i, :len(t)] = t
    return hf, lm, cfg, params, tokens


def test_leaf_kv_equals_a_masked_forward_over_the_same_layout(tmp_path):
    # Given a tiny Llama (as transformers and as our LM) and three leaves of a document
    rng = np.random.default_rng(0)
    leaves = [rng.integers(3, 128, size=n).tolist() for n in (7, 12, 5)]
    pre, post = rng.integers(3, 128, size=6).tolist(), rng.integers(3, 128, size=9).tolist()
    hf, lm, cfg, params, tokens = _tiny_leaves(tmp_path, leaves)
    # When the leaf pass stores their KV caches (float32) and leaves 0 and 2 are answered from
    _, passkv = leaf_memories(lm.graphdef, lm.params, params, cfg, tokens,
                              np.asarray([len(t) for t in leaves]), with_kv=True)
    kv = LeafKV.from_pass(passkv, "float32", "tiny")
    seg_k, seg_v = kv.gather([0, 2])
    ours = _segment_logits(lm, pre, seg_k, seg_v, post)
    # Then the logits equal a plain forward over pre ‖ leaf 0 ‖ leaf 2 ‖ post at the same
    # positions, with the mask the layout implies: each leaf sees itself, the rest is causal.
    ids = pre + leaves[0] + leaves[2] + post
    n = len(ids)
    allowed = np.tril(np.ones((n, n), bool))
    a, b = len(pre), len(pre) + len(leaves[0])
    for start, end in ((a, b), (b, b + len(leaves[2]))):
        allowed[start:end, :start] = False  # a leaf does not see the prompt or other leaves
    mask = torch.where(torch.as_tensor(allowed), 0.0, float("-inf"))[None, None]
    with torch.no_grad():
        ref = torch_model(hf)(torch.as_tensor([ids]), attention_mask=mask,
                              position_ids=torch.arange(n)[None]).logits[0, -1].numpy()
    assert np.abs(ours - ref).max() < 1e-4
    # and the mask matters: the plain causal forward differs
    with torch.no_grad():
        causal = torch_model(hf)(torch.as_tensor([ids])).logits[0, -1].numpy()
    assert np.abs(causal - ref).max() > 1e-3
    # write tokens: memory_kv reads m per leaf, in the same layout
    wk, wv = kv.gather_write([0, 2])
    assert wk.shape == (lm.config.num_layers, 2 * 2, lm.config.num_kv_heads, lm.config.head_dim)
    assert np.isfinite(_segment_logits(lm, pre, wk, wv, post)).all()


def test_leaf_kv_after_a_prefix_equals_the_text_prompt_that_starts_with_it(tmp_path):
    # Given a tiny Llama, two leaves and a prompt whose first tokens are the prefix
    rng = np.random.default_rng(1)
    leaves = [rng.integers(3, 128, size=n).tolist() for n in (9, 6)]
    prefix, post = rng.integers(3, 128, size=5).tolist(), rng.integers(3, 128, size=7).tolist()
    hf, lm, cfg, params, tokens = _tiny_leaves(tmp_path, leaves)
    lengths = np.asarray([len(t) for t in leaves])

    def stored(kv_prefix):
        _, passkv = leaf_memories(lm.graphdef, lm.params, params, cfg, tokens, lengths,
                                  with_kv=True, kv_prefix=kv_prefix)
        return LeafKV.from_pass(passkv, "float32", "tiny", len(kv_prefix))

    with_prefix, alone = stored(prefix), stored([])
    assert with_prefix.prefix_tokens == 5 and alone.prefix_tokens == 0
    # When the first leaf is answered from after the prefix
    ours = _segment_logits(lm, prefix, *with_prefix.gather([0]), post)
    # Then the logits are those of the plain text prompt prefix ‖ leaf ‖ post
    ids = prefix + leaves[0] + post
    with torch.no_grad():
        ref = torch_model(hf)(torch.as_tensor([ids])).logits[0, -1].numpy()
    assert np.abs(ours - ref).max() < 1e-4
    # and a leaf computed alone does not give them (it never saw the prefix)
    assert np.abs(_segment_logits(lm, prefix, *alone.gather([0]), post) - ref).max() > 1e-3
    # The prefix changes the leaves' own rows only: the write tokens are the leaf pass's
    np.testing.assert_array_equal(with_prefix.write_k, alone.write_k)
    with pytest.raises(ValueError, match="prefix tokens"):
        LeafKV.concat(with_prefix, alone)


def test_storage_dtypes_and_their_error(rng):
    x = rng.standard_normal((50, 4, 3, 64)).astype(np.float32) * 3
    q, scale = quantize_int8(x)
    back = q.astype(np.float32) * scale[..., None]
    assert q.dtype == np.int8 and scale.shape == (50, 4, 3)
    # stated tolerance: half a quantization step of each row's max
    assert (np.abs(back - x) <= 0.5 * scale[..., None] + 1e-6).all()
    assert np.abs(back - x).max() / np.abs(x).max() < 0.005


@pytest.fixture(scope="module")
def tiny_h2mt(smollm2_tokenizer):
    lm = tiny_lm_with(smollm2_tokenizer, seed=1, name="tiny-kv-test")
    cfg = H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4, title_tokens=8), k=3,
                     kv_store="bfloat16")
    return H2MT.create(lm, cfg)


@pytest.fixture(scope="module")
def manual():
    return generate_manual(5, chapters=2)


def test_modes_save_load_append_and_int8(tiny_h2mt, manual, tmp_path):
    h = tiny_h2mt
    index = h.build(manual.text, fmt="markdown")
    assert set(index.modes) == {"memory", "memory_kv", "leaf_kv", "text"}
    assert index.kv.k.shape[0] == sum(len(t) for t in index.spec.leaf_tokens)
    q = manual.questions[0].question
    answers = {m: h.answer(index, q, answer_from=m, max_new_tokens=4) for m in index.modes}
    assert len({tuple(a.leaves) for a in answers.values()}) == 1  # one route for every mode
    kv_answer = answers["leaf_kv"]
    assert kv_answer.memory_tokens == sum(len(index.spec.leaf_tokens[i]) for i in kv_answer.leaves)
    # the prefill covers only the prompt's own tokens
    assert kv_answer.prompt_tokens - kv_answer.memory_tokens < 100
    # save/load: memory-mapped, the same answer
    h.save_index(index, tmp_path / "idx")
    _, again = H2MT.load_index(tmp_path / "idx", lm=h.lm)
    assert isinstance(again.kv.k, np.memmap)
    assert h.answer(again, q, answer_from="leaf_kv", max_new_tokens=4).text == kv_answer.text
    # append keeps the stored KV consistent with a fresh build of the same leaves
    more = generate_manual(6, chapters=1).text
    grown = h.append(index, more)
    assert grown.kv.n_leaves == grown.spec.n_leaves
    fresh_k, _ = h._leaf_pass(grown.spec.leaf_tokens[-2:], "bfloat16")[1].gather([0, 1])
    np.testing.assert_array_equal(grown.kv.gather([grown.spec.n_leaves - 2,
                                                   grown.spec.n_leaves - 1])[0], fresh_k)
    h.save_index(grown, tmp_path / "grown")
    _, grown_again = H2MT.load_index(tmp_path / "grown", lm=h.lm)
    np.testing.assert_array_equal(grown_again.kv.gather([0, 3])[1], grown.kv.gather([0, 3])[1])
    # int8: one byte a value plus a 4-byte scale per head_dim values (bfloat16: two bytes)
    small = h.build(manual.text, fmt="markdown", kv_store="int8")
    dh = h.lm.config.head_dim
    assert small.kv.k.nbytes + small.kv.k_scale.nbytes == index.kv.k.nbytes * (dh + 4) / (2 * dh)
    assert h.answer(small, q, answer_from="leaf_kv", max_new_tokens=4).leaves == kv_answer.leaves


def test_bad_input(tiny_h2mt, manual, tmp_path):
    h = tiny_h2mt
    plain = h.build(manual.text, fmt="markdown", kv_store="none")
    assert plain.modes == ("memory", "text")
    q = manual.questions[0].question
    with pytest.raises(ValueError, match="kv_store='bfloat16'"):
        h.answer(plain, q, answer_from="leaf_kv")
    with pytest.raises(ValueError, match="answer_from must be one of"):
        h.answer(plain, q, answer_from="summary")
    index = h.build(manual.text, fmt="markdown")
    other = h2mt_jax.random_lm(seed=2, vocab_size=h.lm.config.vocab_size, hidden_size=32,
                               intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                               head_dim=16, max_position_embeddings=2048)
    other.tokenizer, other.name = h.lm.tokenizer, "another-backbone"
    h_other = H2MT(other, h.config, h.params)
    with pytest.raises(ValueError, match="'tiny-kv-test'.*'another-backbone'"):
        h_other.answer(index, q, answer_from="leaf_kv")
    with pytest.raises(ValueError, match="kv_store must be one of"):
        H2MTConfig(kv_store="fp8")
    with pytest.raises(ValueError, match="leaf_mode='independent'"):
        H2MTConfig(leaf_mode="hmt", kv_store="bfloat16")
    h.save_index(index, tmp_path / "idx")
    (tmp_path / "idx" / "kv" / "v.npy").unlink()
    with pytest.raises(ValueError, match=r"kv/v.npy is missing"):
        H2MT.load_index(tmp_path / "idx", lm=h.lm)
