"""Prompt-prefix caching: the keys and values of a prompt's opening tokens (the chat preamble and
the task template's text before the context, the same for every question of a dataset) are
computed once and kept, so that each prompt prefills only what follows them.

`PrefixCache.get` returns a `Prefix` (its KV cache, bucket-sized), computing it on a miss;
`prefill_after_prefix` runs the rest of a prompt (input embeddings) on top of it. The result is
the prompt's exact prefill: every position attends to the same keys and values, at the same
positions, as in one pass over the whole prompt (causal attention: a prefix never depends on
what follows it). Single prompts only (batch 1): the answer paths of the evaluated methods.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.attention import KVCache
from h2mt_jax.generation.decode import _last_hidden, as_inject, prefill_tokens
from h2mt_jax.shapes import bucket
from h2mt_jax.typing import Array, Float, Int

PREFIX_CACHE_ENTRIES = 16  # prefixes kept per LM (least recently used dropped first)


@dataclasses.dataclass(frozen=True)
class Prefix:
    """The KV cache of `ids` (keys `[K, Dh, S]`, values `[K, S, Dh]` per layer, `S` = the bucket
    of `len(ids)`; slots past `len(ids)` are padding that the next write overwrites)."""

    ids: tuple[int, ...]
    cache: KVCache

    @property
    def n(self) -> int:
        return len(self.ids)


class PrefixCache:
    """A least-recently-used map from prefix token ids to their `Prefix`, for the weights
    `params` (an `LM` keeps one per params object: `LM.prefix_cache`)."""

    def __init__(self, params=None, entries: int = PREFIX_CACHE_ENTRIES):
        self.params, self.entries = params, entries
        self._items: collections.OrderedDict[tuple[int, ...], Prefix] = collections.OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, graphdef, params, ids, pad_id: int = 0) -> Prefix:
        """The `Prefix` of `ids` (at least one token), computed now when it is not kept."""
        key = tuple(int(i) for i in ids)
        if not key:
            raise ValueError("a prompt prefix needs at least one token")
        hit = self._items.get(key)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return hit
        self.misses += 1
        t = bucket(len(key))
        padded = jnp.full((1, t), pad_id, jnp.int32).at[0, :len(key)].set(jnp.asarray(key))
        _, cache = prefill_tokens(graphdef, params, padded, jnp.asarray([len(key)], jnp.int32), t)
        out = Prefix(key, cache)
        self._items[key] = out
        if len(self._items) > self.entries:
            self._items.popitem(last=False)
        return out


def extend_cache(cache: KVCache, size: int) -> KVCache:
    """`cache` with its slot axis zero-padded to `size` (>= its size)."""
    pad = size - cache.size
    if pad < 0:
        raise ValueError(f"cannot shrink a KV cache of {cache.size} slots to {size}")
    return KVCache(keys=[jnp.pad(k, ((0, 0), (0, 0), (0, pad))) for k in cache.keys],
                   values=[jnp.pad(v, ((0, 0), (0, pad), (0, 0))) for v in cache.values],
                   lengths=cache.lengths)


def run_after(model, cache: KVCache, embeds: Float[Array, "1 t d"], length: Int[Array, ""],
              inject=None) -> tuple[Float[Array, "1 v"], KVCache]:
    """Runs `embeds` (`length` real rows, then padding) after the `cache.lengths` filled slots;
    the logits after the last real row and the cache filled up to `cache.lengths + length`.
    `inject`: states put into the residual stream at a block (`Llama.__call__`)."""
    hidden, kvs = model(embeds, cache=cache, inject=inject)
    logits = model.logits(_last_hidden(hidden, jnp.reshape(length, (1,))))
    return logits, KVCache(keys=[k for k, _ in kvs], values=[v for _, v in kvs],
                           lengths=cache.lengths + length)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size", "inject_layer"))
def prefill_after_prefix(graphdef, params, prefix: KVCache, embeds: Float[Array, "1 t d"],
                         length: Int[Array, ""], cache_size: int, inject_layer: int = 0,
                         inject_mask=None, inject_states=None
                         ) -> tuple[Float[Array, "1 v"], KVCache]:
    """Prefill of `[prefix ‖ embeds]` from the prefix's cache: only `embeds` run through the
    backbone (with `inject_layer` >= 1, `inject_states` `[1, t, d]` replace the residual stream
    of the `inject_mask` `[1, t]` rows before that block). Returns the logits after the last
    real row and a `cache_size`-slot cache."""
    model = nnx.merge(graphdef, params)
    return run_after(model, extend_cache(prefix, cache_size), embeds, length,
                     as_inject(inject_layer, inject_mask, inject_states))


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_size"))
def prefill_tokens_after_prefix(graphdef, params, prefix: KVCache, ids: Int[Array, "1 t"],
                                length: Int[Array, ""], cache_size: int
                                ) -> tuple[Float[Array, "1 v"], KVCache]:
    """`prefill_after_prefix` from token ids."""
    model = nnx.merge(graphdef, params)
    return run_after(model, extend_cache(prefix, cache_size), model.embed(ids), length)
