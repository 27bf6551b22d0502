"""Grouped-query attention kernels and the KV cache.

Two kernels, both pure functions with static shapes:
- `causal_attention`: a sequence attends to itself (training, prefill). Queries are processed in
  blocks; block `i` only reads keys `[0, end_i)`, so about half of the masked work is skipped.
- `cached_attention`: a few new tokens attend to a KV cache whose rows have their own lengths.

The cache stores keys transposed (`[B, K, Dh, S]`) and values as `[B, K, S, Dh]`: both score and
value products are then plain row-major matrix products on the CPU, which XLA runs several times
faster than the transposed forms during single-token decoding.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from h2mt_jax.typing import Array, Float, Int

NEG_INF = -1e30


@flax.struct.dataclass
class KVCache:
    """Per-layer keys `[B*K, Dh, S]` and values `[B*K, S, Dh]` (batch and key/value heads merged
    into one leading axis); `lengths[b]` slots of row `b` are filled."""

    keys: list[Array]
    values: list[Array]
    lengths: Int[Array, "b"]

    @property
    def size(self) -> int:
        return self.keys[0].shape[-1]


def _softmax_f32(scores):
    scores = scores.astype(jnp.float32)
    m = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - m)
    return e / jnp.sum(e, axis=-1, keepdims=True)


def causal_attention(q: Float[Array, "b t h dh"], k: Float[Array, "b t k dh"],
                     v: Float[Array, "b t k dh"], *, block: int | None = None
                     ) -> Float[Array, "b t h dh"]:
    """Causal grouped-query attention of a sequence over itself. `q` is already scaled.

    The `g` query heads that share a key/value head are stacked into one matrix, so each query
    block costs two batched matrix products with batch `(b, k)`. Blocks of 128 queries are the
    fastest on CPU; long sequences use at most 16 blocks to bound the compiled program's size.
    """
    b, t, h, dh = q.shape
    if block is None:
        block = max(128, -(-t // (16 * 128)) * 128)
    kh = k.shape[2]
    g = h // kh
    qk = q.reshape(b, t, kh, g, dh).transpose(0, 2, 1, 3, 4)  # [b, k, t, g, dh]
    kk = k.transpose(0, 2, 1, 3)  # [b, k, t, dh]
    vk = v.transpose(0, 2, 1, 3)
    batch = ((0, 1), (0, 1))
    outs = []
    for start in range(0, t, block):
        end = min(t, start + block)
        c = end - start
        qb = qk[:, :, start:end].reshape(b, kh, c * g, dh)  # rows: (query, head-in-group)
        scores = jax.lax.dot_general(qb, kk[:, :, :end], (((3,), (3,)), batch))  # [b,k,c*g,end]
        allowed = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        allowed = jnp.repeat(allowed, g, axis=0)  # [c*g, end]
        scores = jnp.where(allowed, scores.astype(jnp.float32), NEG_INF)
        m = jnp.max(scores, axis=-1, keepdims=True)
        e = jnp.exp(scores - m)
        o = jax.lax.dot_general(e.astype(v.dtype), vk[:, :, :end], (((3,), (2,)), batch))
        o = o / jnp.sum(e, axis=-1, keepdims=True).astype(o.dtype)
        outs.append(o.reshape(b, kh, c, g, dh))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)  # [b, k, t, g, dh]
    return out.transpose(0, 2, 1, 3, 4).reshape(b, t, h, dh)


def cached_attention(q: Float[Array, "b t h dh"], keys_t: Float[Array, "bk dh s"],
                     values: Float[Array, "bk s dh"], positions: Int[Array, "b t"]
                     ) -> Float[Array, "b t h dh"]:
    """New tokens at `positions` attend to the cache slots `<= position` (their own included).

    Call it on the cache returned by `write_cache`. With batch and heads merged into one leading
    axis the attention products read exactly the array that the in-place update wrote, which
    lets XLA keep the cache in place inside the decode loop.
    """
    b, t, h, dh = q.shape
    bk = keys_t.shape[0]
    kh = bk // b
    g = h // kh
    qg = q.reshape(b, t, kh, g, dh).transpose(0, 2, 3, 1, 4).reshape(bk, g * t, dh)
    scores = jax.lax.dot_general(qg, keys_t, (((2,), (1,)), ((0,), (0,)))).astype(jnp.float32)
    pos = jnp.broadcast_to(positions[:, None, None, :], (b, kh, g, t)).reshape(bk, g * t)
    slots = jnp.arange(keys_t.shape[-1])
    scores = jnp.where(slots[None, None, :] <= pos[:, :, None], scores, NEG_INF)
    probs = _softmax_f32(scores).astype(values.dtype)
    out = jax.lax.dot_general(probs, values, (((2,), (1,)), ((0,), (0,))))  # [bk, g*t, dh]
    return out.reshape(b, kh, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def write_cache(keys_t: Float[Array, "bk dh s"], values: Float[Array, "bk s dh"],
                k: Float[Array, "b t k dh"], v: Float[Array, "b t k dh"], start: Int[Array, "b"]):
    """Writes `t` new key/value rows into each batch row's cache from slot `start[b]`."""
    b, t, kh, dh = k.shape
    kt = k.transpose(0, 2, 3, 1).astype(keys_t.dtype)  # [b, k, dh, t]
    vt = v.transpose(0, 2, 1, 3).astype(values.dtype)  # [b, k, t, dh]
    zero = jnp.zeros((), jnp.int32)
    if b == 1:  # the common decode case: one in-place update, no scatter
        s = start[0]
        return (jax.lax.dynamic_update_slice(keys_t, kt[0], (zero, zero, s)),
                jax.lax.dynamic_update_slice(values, vt[0], (zero, s, zero)))

    def one(kc, vc, kn, vn, s):
        return (jax.lax.dynamic_update_slice(kc, kn, (zero, zero, s)),
                jax.lax.dynamic_update_slice(vc, vn, (zero, s, zero)))

    size = keys_t.shape[-1]
    kc, vc = jax.vmap(one)(keys_t.reshape(b, kh, dh, size), values.reshape(b, kh, size, dh),
                           kt, vt, start)
    return kc.reshape(b * kh, dh, size), vc.reshape(b * kh, size, dh)
