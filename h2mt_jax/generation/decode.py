"""Prefill and the compiled decode loop.

`prefill` runs the prompt (token embeddings or any input embeddings) once and fills a KV cache;
`decode` generates inside one `jax.lax.while_loop`, so there is no Python work per token and the
loop stops as soon as every row has produced an end-of-sequence token. Both are jitted on padded
shapes: prompts are right-padded to a length bucket and the cache to a size bucket, so one
compiled program serves every prompt length inside a bucket.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.attention import KVCache
from h2mt_jax.generation.sampling import Sampling, choose
from h2mt_jax.typing import Array, Float, Int

# Prompt and cache lengths are rounded up to one of these, then to multiples of the largest.
def _last_hidden(hidden: Float[Array, "b t d"], lengths: Int[Array, "b"]) -> Float[Array, "b d"]:
    idx = jnp.clip(lengths - 1, 0, hidden.shape[1] - 1)
    return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


def as_inject(layer: int, mask, states):
    """The backbone's `inject` argument (`Llama.__call__`) from its parts; layer 0: none."""
    return None if not layer else (layer, mask, states)


def prefill_cache(model, embeds: Float[Array, "b t d"], lengths: Int[Array, "b"],
                  cache_size: int, inject=None) -> tuple[Float[Array, "b v"], KVCache]:
    """Runs the prompt, returns the logits after each row's last real token and the KV cache.

    Rows are right-padded: row `b` has `lengths[b]` real tokens. Padding never influences real
    positions (attention is causal) and its cache slots are overwritten by the generated tokens.
    `inject`: states put into the residual stream at a block (`Llama.__call__`).
    """
    t = embeds.shape[1]
    if cache_size < t:
        raise ValueError(f"cache_size {cache_size} < prompt length {t}")
    hidden, kvs = model(embeds, inject=inject)
    pad = cache_size - t
    b, _, kh, dh = kvs[0][0].shape
    keys = [jnp.pad(k.transpose(0, 2, 3, 1), ((0, 0), (0, 0), (0, 0), (0, pad))
                    ).reshape(b * kh, dh, cache_size) for k, _ in kvs]
    values = [jnp.pad(v.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pad), (0, 0))
                      ).reshape(b * kh, cache_size, dh) for _, v in kvs]
    logits = model.logits(_last_hidden(hidden, lengths))
    return logits, KVCache(keys=keys, values=values, lengths=lengths.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size", "inject_layer"))
def prefill(graphdef, params, embeds: Float[Array, "b t d"], lengths: Int[Array, "b"],
            cache_size: int, inject_layer: int = 0, inject_mask=None, inject_states=None
            ) -> tuple[Float[Array, "b v"], KVCache]:
    """Jitted `prefill_cache` from input embeddings on a (graphdef, params) split model; with
    `inject_layer` >= 1, `inject_states` `[b, t, d]` replace the residual stream of the
    `inject_mask` `[b, t]` positions before that block."""
    return prefill_cache(nnx.merge(graphdef, params), embeds, lengths, cache_size,
                         as_inject(inject_layer, inject_mask, inject_states))


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size"))
def prefill_tokens(graphdef, params, ids: Int[Array, "b t"], lengths: Int[Array, "b"],
                   cache_size: int) -> tuple[Float[Array, "b v"], KVCache]:
    """Jitted `prefill_cache` from token ids."""
    model = nnx.merge(graphdef, params)
    return prefill_cache(model, model.embed(ids), lengths, cache_size)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "max_new_tokens"),
                   donate_argnames=("cache",))
def decode(graphdef, params, cache: KVCache, first_logits: Float[Array, "b v"], key: Array,
           eos_ids: Int[Array, "e"], pad_id: int | Array, *, sampling: Sampling,
           max_new_tokens: int) -> tuple[Int[Array, "b n"], Int[Array, "b"], KVCache]:
    """Generates up to `max_new_tokens` tokens per row from a filled cache.

    Returns the tokens `[b, max_new_tokens]` (positions after a row's end-of-sequence token hold
    `pad_id`), the number of tokens per row (the end-of-sequence token included) and the cache
    (the donated input cache, updated in place).
    """
    model = nnx.merge(graphdef, params)
    b = first_logits.shape[0]
    key, sub = jax.random.split(key)
    tok = choose(first_logits, sampling, sub)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    done = jnp.isin(tok, eos_ids)
    counts = jnp.ones((b,), jnp.int32)

    def cond(carry):
        i, _, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tok, cache, out, done, counts, key = carry
        hidden, kvs = model(model.embed(tok[:, None]), cache=cache)
        cache = KVCache(keys=[k for k, _ in kvs], values=[v for _, v in kvs],
                        lengths=cache.lengths + 1)
        key, sub = jax.random.split(key)
        nxt = choose(model.logits(hidden[:, 0]), sampling, sub)
        nxt = jnp.where(done, pad_id, nxt)
        counts = counts + (~done).astype(jnp.int32)
        out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, i))
        done = done | jnp.isin(nxt, eos_ids)
        return i + 1, nxt, cache, out, done, counts, key

    carry = (jnp.int32(1), tok, cache, out, done, counts, key)
    _, _, cache, out, _, counts, _ = jax.lax.while_loop(cond, body, carry)
    return out, counts, cache
