"""KV-cache decoding equals recomputation; batching, buckets and sampling behave."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import h2mt_jax
from conftest import make_tiny
from h2mt_jax.shapes import bucket
from h2mt_jax.generation.sampling import Sampling, choose, top_p_filter


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return h2mt_jax.load_lm(make_tiny(tmp_path_factory.mktemp("m"), "llama", seed=3))


def _greedy_by_recompute(lm, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.asarray(lm.logits(np.asarray([seq])))[0, -1].argmax()))
    return seq[len(prompt):]


def test_cache_decoding_equals_recompute(tiny_lm):
    prompts = [[5, 17, 3, 99, 42], list(range(1, 40))]
    gen = tiny_lm.generate_ids(prompts, max_new_tokens=12)
    for p, got in zip(prompts, gen.tokens):
        want = _greedy_by_recompute(tiny_lm, p, 12)
        if tiny_lm.eos_ids:  # generation stops at the end-of-sequence token
            for i, t in enumerate(want):
                if t in tiny_lm.eos_ids:
                    want = want[:i]
                    break
        assert got == want


def test_batch_equals_single_rows(tiny_lm):
    prompts = [[7, 8, 9], list(range(20, 60)), [11] * 17]
    batch = tiny_lm.generate_ids(prompts, max_new_tokens=8).tokens
    single = [tiny_lm.generate_ids([p], max_new_tokens=8).tokens[0] for p in prompts]
    assert batch == single


def test_embeddings_entry_equals_ids(tiny_lm):
    ids = [3, 4, 5, 6, 7, 8]
    emb = tiny_lm.model.embed(jnp.asarray([ids]))
    assert (tiny_lm.generate_ids(embeds=emb, max_new_tokens=6).tokens
            == tiny_lm.generate_ids([ids], max_new_tokens=6).tokens)


def test_one_program_serves_a_bucket(tiny_lm):
    from h2mt_jax.generation.decode import prefill_tokens

    tiny_lm.generate_ids([[1] * 20], max_new_tokens=4)
    before = prefill_tokens._cache_size()
    for n in (18, 21, 25, 30):  # all in the 32-token bucket
        tiny_lm.generate_ids([[1] * n], max_new_tokens=4)
    assert bucket(18) == bucket(30) == 32
    assert prefill_tokens._cache_size() == before


def test_a_cached_prefix_gives_the_whole_prompts_answer(tiny_lm):
    from h2mt_jax.generation.prefix import prefill_after_prefix

    # Given prompts that share a 23-token opening (a template's text before the context)
    pre = list(range(3, 26))
    rests = [[40, 41, 42], list(range(60, 100))]
    whole = [tiny_lm.generate_ids([pre + r], max_new_tokens=10) for r in rests]
    # When only the rest is prefilled, from the opening's cached keys and values
    cache = tiny_lm.prefix_cache
    first = [tiny_lm.generate_ids([r], prefix=pre, max_new_tokens=10) for r in rests]
    # Then the answers and the first-token logits' argmax are the whole prompt's
    assert [g.tokens for g in first] == [g.tokens for g in whole]
    assert first[0].prompt_tokens == whole[0].prompt_tokens == [len(pre) + 3]
    assert (cache.misses, cache.hits) == (1, 1)  # the opening ran once
    # and the prefilled logits themselves match, from token ids and from embeddings
    prefix = cache.get(tiny_lm.graphdef, tiny_lm.params, pre)
    emb = tiny_lm.model.embed(jnp.asarray([rests[1] + [0] * 24]))  # padded to the 64 bucket
    logits, filled = prefill_after_prefix(tiny_lm.graphdef, tiny_lm.params, prefix.cache, emb,
                                          jnp.int32(len(rests[1])), 128)
    want = np.asarray(tiny_lm.logits(np.asarray([pre + rests[1]])))[0, -1]
    np.testing.assert_allclose(np.asarray(logits)[0], want, rtol=1e-4, atol=1e-4)
    assert int(filled.lengths[0]) == len(pre) + len(rests[1])
    emb_first = tiny_lm.generate_ids(embeds=tiny_lm.model.embed(jnp.asarray([rests[0]])),
                                     prefix=pre, max_new_tokens=10)
    assert emb_first.tokens == whole[0].tokens
    # With prefix reuse off, the same call runs the whole prompt and answers the same
    tiny_lm.reuse_prefixes = False
    try:
        assert tiny_lm.generate_ids([rests[0]], prefix=pre, max_new_tokens=10).tokens == \
            whole[0].tokens
        assert tiny_lm.generate_ids(embeds=tiny_lm.model.embed(jnp.asarray([rests[0]])),
                                    prefix=pre, max_new_tokens=10).tokens == whole[0].tokens
    finally:
        tiny_lm.reuse_prefixes = True
    # A prompt batch cannot share one cached prefix
    with pytest.raises(ValueError, match="one prompt at a time"):
        tiny_lm.generate_ids(rests, prefix=pre, max_new_tokens=2)


def test_a_cached_prefix_before_a_kv_segment_gives_the_same_prefill(tiny_lm):
    from h2mt_jax.generation.kv_prompt import prefill_segment_after_prefix, prefill_with_segment

    # Given [pre ‖ segment of stored keys/values ‖ post]
    c = tiny_lm.config
    pre, post = list(range(3, 26)), [50, 51, 52, 53]
    rng = np.random.default_rng(0)
    seg_k, seg_v = (jnp.asarray(rng.normal(size=(c.num_layers, 16, c.num_kv_heads, c.head_dim)),
                                jnp.float32) for _ in range(2))
    post_ids = jnp.asarray([post + [0] * 12])
    want, _ = prefill_with_segment(tiny_lm.graphdef, tiny_lm.params,
                                   jnp.asarray([pre + [0] * 9]), jnp.int32(len(pre)), seg_k,
                                   seg_v, jnp.int32(13), post_ids, jnp.int32(len(post)), 128)
    # When pre comes from the prefix cache
    prefix = tiny_lm.prefix_cache.get(tiny_lm.graphdef, tiny_lm.params, pre)
    got, cache = prefill_segment_after_prefix(tiny_lm.graphdef, tiny_lm.params, prefix.cache,
                                              seg_k, seg_v, jnp.int32(13), post_ids,
                                              jnp.int32(len(post)), 128)
    # Then the logits and the filled length are the same
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert int(cache.lengths[0]) == len(pre) + 13 + len(post)


def test_the_prefix_cache_is_bounded_and_follows_the_weights(tiny_lm):
    from h2mt_jax.generation.prefix import PrefixCache

    cache = PrefixCache(tiny_lm.params, entries=2)
    for p in ([1, 2], [3, 4], [1, 2], [5, 6]):  # [3, 4] is the least recently used
        cache.get(tiny_lm.graphdef, tiny_lm.params, p)
    assert len(cache) == 2 and (cache.hits, cache.misses) == (1, 3)
    cache.get(tiny_lm.graphdef, tiny_lm.params, [1, 2])
    assert cache.hits == 2
    with pytest.raises(ValueError, match="at least one token"):
        cache.get(tiny_lm.graphdef, tiny_lm.params, [])
    other = tiny_lm.with_params(jax.tree.map(lambda x: x * 1.01, tiny_lm.params))
    assert other.prefix_cache is not tiny_lm.prefix_cache and len(other.prefix_cache) == 0


def test_sampling_is_seeded_and_respects_top_p(tiny_lm):
    p = [[5, 6, 7]]
    a = tiny_lm.generate_ids(p, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1).tokens
    b = tiny_lm.generate_ids(p, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1).tokens
    assert a == b
    # the temperature is used: greedy repeats one answer, sampling at T=1 gives several
    greedy = {tuple(tiny_lm.generate_ids(p, max_new_tokens=6, seed=s).tokens[0]) for s in range(8)}
    sampled = {tuple(tiny_lm.generate_ids(p, max_new_tokens=6, temperature=1.0, seed=s).tokens[0])
               for s in range(8)}
    assert len(greedy) == 1 and len(sampled) > 1
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.7)))[0]
    assert kept.tolist() == [True, True, False, False]
    assert np.isfinite(np.asarray(top_p_filter(logits, 0.01)))[0].tolist() == [True, False, False, False]
    draws = {int(choose(logits, Sampling(1.0, 0.7), k)[0]) for k in jax.random.split(jax.random.PRNGKey(0), 200)}
    assert draws == {0, 1}


def test_temperature_scales_the_distribution(tiny_lm):
    # Draws at temperature T follow softmax(logits / T), i.e. p^(1/T) renormalised
    p = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray([p], jnp.float32))
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    for t in (0.5, 2.0):
        draws = np.asarray(jax.vmap(lambda k, t=t: choose(logits, Sampling(t, 1.0), k))(keys))
        want = p ** (1 / t) / (p ** (1 / t)).sum()
        np.testing.assert_allclose(np.bincount(draws[:, 0], minlength=4) / len(keys), want,
                                   atol=0.03, err_msg=f"T={t}")
    # and generation uses it: near T=0, every seed gives the greedy answer
    prompt = [[5, 6, 7]]
    greedy = tiny_lm.generate_ids(prompt, max_new_tokens=8).tokens
    for s in range(3):
        assert tiny_lm.generate_ids(prompt, max_new_tokens=8, temperature=1e-4,
                                    seed=s).tokens == greedy


def test_bucket():
    assert bucket(1) == 16 and bucket(16) == 16 and bucket(17) == 32
    assert bucket(8193) == 16384
    from h2mt_jax.shapes import PROMPT_BUCKETS

    # prompts also take the steps halfway between powers of two (less padding to prefill)
    assert [bucket(n, PROMPT_BUCKETS) for n in (90, 150, 300, 700, 1100)] == [96, 192, 384, 768,
                                                                              1536]
