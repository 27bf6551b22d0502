"""Host-side generation driver: pad to buckets, prefill, decode, time each phase."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from h2mt_jax.generation.decode import decode, prefill, prefill_tokens
from h2mt_jax.generation.prefix import prefill_after_prefix, prefill_tokens_after_prefix
from h2mt_jax.shapes import PROMPT_BUCKETS, bucket
from h2mt_jax.generation.sampling import Sampling


@dataclasses.dataclass
class Generation:
    """Generated token ids per row (end-of-sequence token excluded) and phase timings (seconds).

    `ttft_s` is prefill plus the choice of the first token: the time to first token of the prompt
    as given (callers add their own query encoding or routing time).
    """

    tokens: list[list[int]]
    prefill_s: float
    decode_s: float
    prompt_tokens: list[int]

    @property
    def ttft_s(self) -> float:
        return self.prefill_s


def pad_ids(ids: list[list[int]], pad_id: int, length: int) -> np.ndarray:
    out = np.full((len(ids), length), pad_id, np.int32)
    for i, row in enumerate(ids):
        out[i, :len(row)] = row
    return out


def _finish(out, counts, eos_ids) -> list[list[int]]:
    out, counts = np.asarray(out), np.asarray(counts)
    rows = []
    for r, n in zip(out, counts):
        toks = [int(t) for t in r[:n]]
        if toks and toks[-1] in eos_ids:
            toks = toks[:-1]
        rows.append(toks)
    return rows


def generate(graphdef, params, *, max_positions: int, eos_ids: tuple[int, ...], pad_id: int,
             max_new_tokens: int, sampling: Sampling = Sampling(), seed: int = 0,
             ids: list[list[int]] | None = None, embeds: np.ndarray | jax.Array | None = None,
             lengths: list[int] | None = None, prefix: list[int] | None = None,
             prefix_cache=None, inject: tuple | None = None) -> Generation:
    """Generates from token-id prompts (`ids`) or from input embeddings (`embeds` `[B, T, d]` with
    `lengths`). Prompts are right-padded to a length bucket; the cache to a size bucket.

    `prefix` (token ids, one prompt only) with `prefix_cache` (a `generation.prefix.PrefixCache`):
    the prompt starts with these tokens and `ids` / `embeds` are what follows them; the prefix's
    keys and values come from the cache (computed there on a miss, inside the timed prefill), so
    only the rest is run. `prompt_tokens` counts the prefix too.

    `inject` (with `embeds`): (block L >= 1, mask `[B, T]`, states `[B, T, d]`) aligned with
    `embeds`: the masked rows' residual stream is replaced by `states` before block L
    (`Llama.__call__`; the `memory` reading of inner-layer memories)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if (ids is None) == (embeds is None):
        raise ValueError("pass exactly one of ids or embeds")
    if ids is not None:
        lengths = [len(r) for r in ids]
    else:
        lengths = list(lengths if lengths is not None else [embeds.shape[1]] * embeds.shape[0])
    if min(lengths) < 1:
        raise ValueError(f"prompt {int(np.argmin(lengths))} is empty")
    if inject is not None and embeds is None:
        raise ValueError("inject goes with embeds prompts")
    if prefix:
        if len(lengths) != 1:
            raise ValueError("a cached prefix serves one prompt at a time")
        if prefix_cache is None:
            raise ValueError("a prefix needs the prefix_cache that keeps its keys and values")
        return _generate_after(graphdef, params, prefix_cache, list(prefix), ids, embeds,
                               lengths[0],
                               max_positions=max_positions, eos_ids=eos_ids, pad_id=pad_id,
                               max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                               inject=inject)
    longest = max(lengths)
    if longest + max_new_tokens > max_positions:
        raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                         f"model's {max_positions} positions; shorten or truncate the prompt")
    t = bucket(longest, PROMPT_BUCKETS)
    cache_size = min(bucket(t + max_new_tokens), max(max_positions, t + max_new_tokens))
    lens = jnp.asarray(lengths, jnp.int32)
    start = time.perf_counter()
    if ids is not None:
        logits, cache = prefill_tokens(graphdef, params, jnp.asarray(pad_ids(ids, pad_id, t)),
                                       lens, cache_size)
    else:
        x = jnp.asarray(embeds)
        x = jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0)))
        logits, cache = prefill(graphdef, params, x, lens, cache_size,
                                *_padded_inject(inject, t))
    return decode_timed(graphdef, params, cache, logits, start, eos_ids=eos_ids, pad_id=pad_id,
                        max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                        prompt_tokens=lengths)


def _padded_inject(inject, t: int) -> tuple:
    """(layer, mask, states) of `inject` with the rows padded to `t`; (0, None, None) for none."""
    if inject is None:
        return 0, None, None
    layer, mask, states = inject
    pad = t - np.shape(mask)[1]
    return (int(layer), jnp.pad(jnp.asarray(mask, bool), ((0, 0), (0, pad))),
            jnp.pad(jnp.asarray(states, jnp.float32), ((0, 0), (0, pad), (0, 0))))


def _generate_after(graphdef, params, prefix_cache, prefix_ids: list[int], ids, embeds,
                    length: int, *, max_positions: int, eos_ids, pad_id: int,
                    max_new_tokens: int, sampling: Sampling, seed: int,
                    inject: tuple | None = None) -> Generation:
    total = len(prefix_ids) + length
    if total + max_new_tokens > max_positions:
        raise ValueError(f"prompt of {total} tokens + {max_new_tokens} new tokens exceeds the "
                         f"model's {max_positions} positions; shorten or truncate the prompt")
    t = bucket(length, PROMPT_BUCKETS)
    n = jnp.int32(length)
    start = time.perf_counter()
    prefix = prefix_cache.get(graphdef, params, prefix_ids, pad_id)
    need = prefix.n + t + max_new_tokens  # the padded rest is written from slot prefix.n
    cache_size = max(min(bucket(need), max(max_positions, need)), prefix.cache.size)
    if ids is not None:
        logits, cache = prefill_tokens_after_prefix(
            graphdef, params, prefix.cache, jnp.asarray(pad_ids(ids, pad_id, t)), n, cache_size)
    else:
        x = jnp.asarray(embeds)
        x = jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0)))
        logits, cache = prefill_after_prefix(graphdef, params, prefix.cache, x, n, cache_size,
                                             *_padded_inject(inject, t))
    return decode_timed(graphdef, params, cache, logits, start, eos_ids=eos_ids, pad_id=pad_id,
                        max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                        prompt_tokens=[total])


def decode_timed(graphdef, params, cache, logits, prefill_start: float, *,
                 eos_ids: tuple[int, ...], pad_id: int, max_new_tokens: int, sampling: Sampling,
                 seed: int, prompt_tokens: list[int]) -> Generation:
    """Decodes from a filled cache and the prefill's logits; `Generation` with the prefill time
    (from `prefill_start` until the logits are ready) and the decode time."""
    logits.block_until_ready()
    prefill_s = time.perf_counter() - prefill_start
    start = time.perf_counter()
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
    out, counts, _ = decode(graphdef, params, cache, logits, jax.random.PRNGKey(seed), eos,
                            jnp.int32(pad_id), sampling=sampling, max_new_tokens=max_new_tokens)
    out = jax.device_get(out)
    decode_s = time.perf_counter() - start
    return Generation(_finish(out, counts, set(eos_ids)), prefill_s, decode_s, prompt_tokens)
