"""The HMT cell as pure functions: summary pass, memory recall, main pass, segment recurrence.

Per segment `x_n` of `L` tokens (DESIGN.md §4.1, the reference's `RecurrentWrapper.forward`):
1. summary: `q_n = f([p ‖ E(x_n[:Lq]) ‖ p])` at the last position (stage 2 only);
2. recall: `P_n = softmax((q_n W_q)(M W_k)ᵀ · scale) · M` over the ring buffer `M` of the last `N`
   memories; stage 1 uses `P_n = M_{n-1}`; the first segment uses the learned `m0`;
3. main pass: `h = f([P_n ‖ E(sensory) ‖ E(x_n) ‖ P_n])`; `M_n` = `h` at the trailing `P_n`.
A short (last) segment keeps the trailing memory right after its last real token, as the
reference does, so padding never changes a result.

The recurrence is one `jax.lax.scan` whose carry (`HMTState`) has a fixed size whatever the
length of the input; the first segment (no sensory tokens, no recall) is peeled off the scan.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.typing import Array, Float, Int, PyTree

HMTParams = dict  # {"memory": [1, d], "summary": [1, d], "w_q": [d, dh], "w_k": [d, dh]}


def init_params(hidden_size: int, embedding_std: float, cfg: HMTConfig, key: Array) -> HMTParams:
    """m0 and p ~ N(0, 1)·std(E) (as the reference); W_q, W_k as torch.nn.Linear's default init."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    bound = 1.0 / np.sqrt(hidden_size)
    uniform = lambda k: jax.random.uniform(  # noqa: E731
        k, (hidden_size, cfg.recall_dim), jnp.float32, -bound, bound)
    return {"memory": jax.random.normal(k1, (1, hidden_size)) * embedding_std,
            "summary": jax.random.normal(k2, (1, hidden_size)) * embedding_std,
            "w_q": uniform(k3), "w_k": uniform(k4)}


@flax.struct.dataclass
class HMTState:
    """The scan carry: ring buffer of memories, how many were pushed, the latest memory, and the
    previous segment's last `k_s` token ids (the sensory tokens of the next segment)."""

    cache: Float[Array, "b n d"]
    count: Int[Array, ""]
    memory: Float[Array, "b d"]
    sensory: Int[Array, "b ks"]


def _hidden(model, embeds: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
    return model(embeds)[0]


def _put(embeds: Float[Array, "b t d"], token: Float[Array, "b d"], pos) -> Float[Array, "b t d"]:
    zero = jnp.zeros((), jnp.int32)
    return jax.lax.dynamic_update_slice(embeds, token[:, None, :].astype(embeds.dtype),
                                        (zero, jnp.asarray(pos, jnp.int32), zero))


def _take(h: Float[Array, "b t d"], pos) -> Float[Array, "b d"]:
    return jax.lax.dynamic_index_in_dim(h, jnp.asarray(pos, jnp.int32), axis=1, keepdims=False)


def summary_pass(model, params: HMTParams, cfg: HMTConfig, x: Float[Array, "b l d"], n
                 ) -> Float[Array, "b d"]:
    """`q_n`: the summary prompt around the first `Lq` tokens of the segment, last position.

    `n`: the segment's real token count, a scalar or one per row `[b]` (segments of several
    documents or positions batched into one pass, `summary_queries`)."""
    b = x.shape[0]
    lq = cfg.query_tokens
    nq = jnp.broadcast_to(jnp.minimum(n, lq), (b,)).astype(jnp.int32)
    p = jnp.broadcast_to(params["summary"], (b, x.shape[-1])).astype(x.dtype)
    emb = jnp.concatenate([p[:, None], x[:, :lq], jnp.zeros_like(x[:, :1])], 1)
    slot = (jnp.arange(emb.shape[1])[None, :] == (1 + nq)[:, None])[..., None]  # [b, t, 1]
    emb = jnp.where(slot, p[:, None], emb)
    h = _hidden(model, emb)
    return jnp.take_along_axis(h, (1 + nq)[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def summary_queries(model, params: HMTParams, cfg: HMTConfig, ids: Int[Array, "s b l"],
                    lengths: Int[Array, "s"]) -> Float[Array, "s b d"]:
    """The summary queries of `s` segments in one batched pass: `q_n` reads only segment `n`'s
    own tokens (not the memory), so the `s` passes need not wait for the recurrence."""
    s, b, l = ids.shape
    lq = cfg.query_tokens
    x = model.embed(ids[:, :, :lq].reshape(s * b, lq))
    q = summary_pass(model, params, cfg, x, jnp.repeat(lengths, b))
    return q.reshape(s, b, -1)


def recall(params: HMTParams, cfg: HMTConfig, q: Float[Array, "b d"], cache: Float[Array, "b n d"],
           count) -> Float[Array, "b d"]:
    """Cross-attention of the summary over the stored memories (no value/output projection)."""
    scale = cfg.score_scale(q.shape[-1])
    qh = q @ params["w_q"]  # [b, dh]
    kh = cache @ params["w_k"]  # [b, n, dh]
    scores = jnp.einsum("bh,bnh->bn", qh, kh) * scale
    valid = jnp.arange(cache.shape[1]) < count
    scores = jnp.where(valid[None, :], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bn,bnd->bd", probs, cache)


def main_pass(model, p_n: Float[Array, "b d"], sensory: Float[Array, "b ks d"] | None,
              x: Float[Array, "b l d"], n) -> tuple[Float[Array, "b l d"], Float[Array, "b d"]]:
    """`[P ‖ sensory ‖ x ‖ P]` -> (hidden states at the `L` token slots, the new memory)."""
    parts = [p_n[:, None].astype(x.dtype)]
    if sensory is not None:
        parts.append(sensory.astype(x.dtype))
    off = sum(p.shape[1] for p in parts)
    emb = jnp.concatenate(parts + [x, jnp.zeros_like(x[:, :1])], axis=1)
    emb = _put(emb, p_n, off + n)
    h = _hidden(model, emb)
    return h[:, off:off + x.shape[1]], _take(h, off + n).astype(jnp.float32)


def _push(cache: Float[Array, "b n d"], count, memory: Float[Array, "b d"]):
    slot = count % cache.shape[1]
    zero = jnp.zeros((), jnp.int32)
    cache = jax.lax.dynamic_update_slice(cache, memory[:, None].astype(cache.dtype),
                                         (zero, slot.astype(jnp.int32), zero))
    return cache, count + 1


def _last_tokens(ids: Int[Array, "b l"], n, k: int) -> Int[Array, "b k"]:
    start = jnp.maximum(n - k, 0)
    return jax.lax.dynamic_slice_in_dim(ids, start.astype(jnp.int32), k, axis=1)


def first_segment(model, params: HMTParams, cfg: HMTConfig, ids: Int[Array, "b l"], n
                  ) -> tuple[HMTState, Float[Array, "b l d"]]:
    """Segment 0: `[m0 ‖ x_0 ‖ m0]`, no sensory tokens, no recall."""
    b, d = ids.shape[0], params["memory"].shape[-1]
    m0 = jnp.broadcast_to(params["memory"], (b, d))
    h, mem = main_pass(model, m0, None, model.embed(ids), n)
    cache, count = _push(jnp.zeros((b, cfg.recall_context, d), jnp.float32), jnp.int32(0), mem)
    sensory = _last_tokens(ids, n, cfg.num_sensory)
    return HMTState(cache=cache, count=count, memory=mem, sensory=sensory), h


def next_segment(model, params: HMTParams, cfg: HMTConfig, state: HMTState, ids: Int[Array, "b l"],
                 n, query: Float[Array, "b d"] | None = None
                 ) -> tuple[HMTState, Float[Array, "b l d"]]:
    """Segment n >= 1 with `n` real tokens (n = 0 leaves the state unchanged: padding).
    `query`: its summary query when already computed (`summary_queries`), stage 2."""
    x = model.embed(ids)
    if cfg.stage == 2:
        if query is None:
            query = summary_pass(model, params, cfg, x, n)
        p_n = recall(params, cfg, query, state.cache, state.count)
    else:
        p_n = state.memory
    sens = model.embed(state.sensory) if cfg.num_sensory else None
    h, mem = main_pass(model, p_n, sens, x, n)
    cache, count = _push(state.cache, state.count, mem)
    new = HMTState(cache=cache, count=count, memory=mem,
                   sensory=_last_tokens(ids, n, cfg.num_sensory))
    real = n > 0
    return jax.tree.map(lambda a, b: jnp.where(real, a, b), new, state), h


def run_segments(model, params: HMTParams, cfg: HMTConfig, ids: Int[Array, "s b l"],
                 lengths: Int[Array, "s"], out_fn, extras: PyTree = None, *,
                 state: HMTState | None = None, remat: bool | str = False,
                 skip_padding: bool = True) -> tuple[HMTState, PyTree]:
    """Reads segments in order and stacks `out_fn(hidden [b, l, d], state, extra)` per segment.

    `state` is the state after the segment (its `memory` is the segment's new memory) and `extra`
    the segment's slice of `extras` (a pytree of `[s, ...]` arrays, e.g. targets). Without
    `state` the first segment starts the document (peeled off the scan); with `state` every
    segment continues it (streaming in chunks). Returns the final state and the outputs `[s, ...]`.

    `remat` (training): recompute each segment's activations (and the batched summary pass's)
    in the backward pass; True or "full" saves nothing inside a segment, "dots" saves the matrix
    products' outputs (`jax.checkpoint_policies.dots_saveable`), False or "none" saves everything.
    `skip_padding=False` drops the per-segment `lax.cond` that skips empty segments, for callers
    whose segments are all real (training windows); it also computes the stage-2 summary queries
    of all segments in one batched pass before the recurrence (`summary_queries`), which
    the skipping path does not do, since padding segments would pay for theirs.
    """

    def step(st, seg_ids, n, q):
        return next_segment(model, params, cfg, st, seg_ids, n, q)

    queries_fn = lambda p, i, n: summary_queries(model, p, cfg, i, n)  # noqa: E731
    if remat not in (False, "none"):
        if remat not in (True, "full", "dots"):
            raise ValueError(f"remat must be none, full or dots, got {remat!r}")
        policy = jax.checkpoint_policies.dots_saveable if remat == "dots" else None
        step = jax.checkpoint(step, policy=policy)
        queries_fn = jax.checkpoint(queries_fn, policy=policy)
    first_out = None
    if state is None:
        state, h0 = first_segment(model, params, cfg, ids[0], lengths[0])
        first_out = out_fn(h0, state, jax.tree.map(lambda e: e[0], extras))
        ids, lengths = ids[1:], lengths[1:]
        extras = jax.tree.map(lambda e: e[1:], extras)
    queries = None
    if cfg.stage == 2 and not skip_padding and ids.shape[0]:
        queries = queries_fn(params, ids, lengths)

    def real(st, seg_ids, n, extra, q=None):
        st, h = step(st, seg_ids, n, q)
        return st, out_fn(h, st, extra)

    def body(st, xs):
        seg_ids, n, extra, q = xs
        if not skip_padding:
            return real(st, seg_ids, n, extra, q)
        # Padding segments (n = 0, the tail of a fixed-size chunk) cost nothing: skip them.
        shapes = jax.eval_shape(real, st, seg_ids, n, extra)[1]

        def skip(st, *_):
            return st, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return jax.lax.cond(n > 0, real, skip, st, seg_ids, n, extra)

    state, outs = jax.lax.scan(body, state, (ids, lengths, extras, queries))
    if first_out is not None:
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], 0), first_out, outs)
    return state, outs


def split_segments(ids: np.ndarray, tokens_per_segment: int, num_segments: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[B, T]` ids -> (ids `[S, B, L]`, next-token targets `[S, B, L]` (-1: none), lengths `[S]`).

    `num_segments` pads with empty segments (length 0) up to a fixed count.
    """
    b, t = ids.shape
    l = tokens_per_segment
    s = max(1, -(-t // l))
    total = s if num_segments is None else num_segments
    if total < s:
        raise ValueError(f"{t} tokens need {s} segments, more than num_segments={total}")
    padded = np.zeros((b, total * l), np.int32)
    padded[:, :t] = ids
    targets = np.full((b, total * l), -1, np.int32)
    targets[:, :t - 1] = ids[:, 1:]
    lengths = np.clip(t - np.arange(total) * l, 0, l).astype(np.int32)
    seg = lambda a: a.reshape(b, total, l).transpose(1, 0, 2)  # noqa: E731
    return seg(padded), seg(targets), lengths
