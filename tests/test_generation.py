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
