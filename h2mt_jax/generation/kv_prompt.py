"""Prompts whose middle arrives as precomputed keys and values (H²MT's `leaf_kv` and `memory_kv`
answers): `[pre tokens ‖ cached segment ‖ post tokens]`.

The cached segment's keys are stored *before* RoPE (`unrope`), so they can be rotated to any
answer-time position: the segment is laid out right after the `pre` tokens, at positions
`len(pre) .. len(pre) + L - 1`. Only `pre` and `post` are run through the backbone (the prefill
covers the prompt's own tokens); `post` attends to everything before it, `pre` to itself, and
each cached piece to what it attended to when it was computed (for H²MT: the chat preamble the
prompt starts with, and its own leaf; `H2MTConfig.kv_prefix`). Then
decoding proceeds from the filled cache as for any prompt.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.attention import KVCache, write_cache
from h2mt_jax.backbone.rope import apply_rope, inverse_frequencies, rope_tables
from h2mt_jax.generation.decode import prefill_cache
from h2mt_jax.generation.generate import Generation, decode_timed, pad_ids
from h2mt_jax.generation.prefix import extend_cache
from h2mt_jax.generation.sampling import Sampling
from h2mt_jax.shapes import PROMPT_BUCKETS, bucket
from h2mt_jax.typing import Array, Float, Int


def unrope(k: Float[Array, "b t h dh"], positions: Int[Array, "b t"], cfg) -> Float[Array, "b t h dh"]:
    """Keys with their rotary embedding removed (rotated back from `positions` to 0)."""
    cos, sin = rope_tables(inverse_frequencies(cfg), positions)
    return apply_rope(k, cos, -sin)


def write_segment(cache: KVCache, seg_k: Float[Array, "layers b ts kh dh"],
                  seg_v: Float[Array, "layers b ts kh dh"], start: Int[Array, "b"], cfg
                  ) -> KVCache:
    """`cache` with a segment of pre-RoPE keys and values written from slot `start[b]` of each
    row, its keys rotated to those positions; `lengths` = `start + ts`. Differentiable (the
    memory losses train through it)."""
    ts = seg_k.shape[2]
    positions = start[:, None] + jnp.arange(ts, dtype=jnp.int32)[None]
    cos, sin = rope_tables(inverse_frequencies(cfg), positions)
    keys, values = [], []
    for layer in range(cfg.num_layers):
        k = apply_rope(seg_k[layer].astype(jnp.float32), cos, sin)  # [b, ts, kh, dh]
        kc, vc = write_cache(cache.keys[layer], cache.values[layer], k, seg_v[layer], start)
        keys.append(kc)
        values.append(vc)
    return KVCache(keys=keys, values=values, lengths=(start + ts).astype(jnp.int32))


def _segment_then_post(model, cache: KVCache, pre_len, seg_k, seg_v, seg_len, post, post_len):
    """After `pre_len` filled slots of `cache`: the segment's keys/values written, then `post`
    run; the logits after its last real token and the filled cache."""
    cache = write_segment(cache, seg_k[:, None], seg_v[:, None], pre_len[None], model.cfg)
    start = pre_len + seg_len  # padding rows of the segment are overwritten by `post`
    cache = KVCache(keys=cache.keys, values=cache.values, lengths=start[None])
    hidden, kvs = model(model.embed(post), cache=cache)
    last = jnp.take(hidden[0], jnp.maximum(post_len - 1, 0), axis=0)
    cache = KVCache(keys=[k for k, _ in kvs], values=[v for _, v in kvs],
                    lengths=(start + post_len)[None])
    return model.logits(last)[None], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size"))
def prefill_with_segment(graphdef, params, pre: Int[Array, "1 tp"], pre_len: Int[Array, ""],
                         seg_k: Float[Array, "layers ts kh dh"],
                         seg_v: Float[Array, "layers ts kh dh"], seg_len: Int[Array, ""],
                         post: Int[Array, "1 tq"], post_len: Int[Array, ""], cache_size: int
                         ) -> tuple[Float[Array, "1 v"], KVCache]:
    """Prefill of `[pre ‖ segment ‖ post]` where the segment is given as pre-RoPE keys and values
    (`seg_len` real rows of `seg_k`/`seg_v`, padded). Returns the logits after the last post token
    and the KV cache (filled up to `pre_len + seg_len + post_len`)."""
    model = nnx.merge(graphdef, params)
    _, cache = prefill_cache(model, model.embed(pre), pre_len[None], cache_size)
    return _segment_then_post(model, cache, pre_len, seg_k, seg_v, seg_len, post, post_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size"))
def prefill_segment_after_prefix(graphdef, params, prefix: KVCache,
                                 seg_k: Float[Array, "layers ts kh dh"],
                                 seg_v: Float[Array, "layers ts kh dh"], seg_len: Int[Array, ""],
                                 post: Int[Array, "1 tq"], post_len: Int[Array, ""],
                                 cache_size: int) -> tuple[Float[Array, "1 v"], KVCache]:
    """`prefill_with_segment` with `pre` already in `prefix` (its cached keys and values,
    `generation.prefix`): only `post` runs through the backbone."""
    model = nnx.merge(graphdef, params)
    cache = extend_cache(prefix, cache_size)
    return _segment_then_post(model, cache, prefix.lengths[0], seg_k, seg_v, seg_len, post,
                              post_len)


def generate_with_segment(graphdef, params, *, pre: list[int], seg_k: np.ndarray,
                          seg_v: np.ndarray, post: list[int], max_positions: int,
                          eos_ids: tuple[int, ...], pad_id: int, max_new_tokens: int,
                          sampling: Sampling = Sampling(), seed: int = 0,
                          prefix_cache=None) -> Generation:
    """Greedy (or sampled) generation from `[pre ‖ segment ‖ post]`; `seg_k`/`seg_v`:
    `[layers, L, kv_heads, head_dim]` pre-RoPE keys and values. Shapes are bucketed, so one
    compiled program serves many prompt and segment lengths. With `prefix_cache`
    (`generation.prefix.PrefixCache`), `pre`'s keys and values come from it (computed there on
    a miss, inside the timed prefill)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not pre or not post:
        raise ValueError("the prompt needs tokens before and after the cached segment")
    n_seg = int(seg_k.shape[1])
    total = len(pre) + n_seg + len(post)
    if total + max_new_tokens > max_positions:
        raise ValueError(f"prompt of {total} positions + {max_new_tokens} new tokens exceeds the "
                         f"model's {max_positions} positions; select fewer leaves")
    tp, tq = bucket(len(pre), PROMPT_BUCKETS), bucket(len(post), PROMPT_BUCKETS)
    ts = bucket(max(n_seg, 1))
    cache_size = bucket(tp + ts + tq + max_new_tokens)
    k = np.zeros((seg_k.shape[0], ts) + seg_k.shape[2:], np.float32)
    v = np.zeros_like(k)
    k[:, :n_seg], v[:, :n_seg] = seg_k, seg_v
    start = time.perf_counter()
    if prefix_cache is not None:
        prefix = prefix_cache.get(graphdef, params, pre, pad_id)
        cache_size = max(cache_size, prefix.cache.size)
        logits, cache = prefill_segment_after_prefix(
            graphdef, params, prefix.cache, jnp.asarray(k), jnp.asarray(v), jnp.int32(n_seg),
            jnp.asarray(pad_ids([post], pad_id, tq)), jnp.int32(len(post)), cache_size)
    else:
        logits, cache = prefill_with_segment(
            graphdef, params, jnp.asarray(pad_ids([pre], pad_id, tp)), jnp.int32(len(pre)),
            jnp.asarray(k), jnp.asarray(v), jnp.int32(n_seg),
            jnp.asarray(pad_ids([post], pad_id, tq)), jnp.int32(len(post)), cache_size)
    return decode_timed(graphdef, params, cache, logits, start, eos_ids=eos_ids, pad_id=pad_id,
                        max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                        prompt_tokens=[total])
