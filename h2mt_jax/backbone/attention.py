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
    """Per-layer keys `[B, K, Dh, S]` and values `[B, K, S, Dh]`; `lengths[b]` slots are filled."""

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
                     v: Float[Array, "b t k dh"], *, block: int = 512) -> Float[Array, "b t h dh"]:
    """Causal grouped-query attention of a sequence over itself. `q` is already scaled."""
    b, t, h, dh = q.shape
    kh = k.shape[2]
    g = h // kh
    qg = q.reshape(b, t, kh, g, dh)
    outs = []
    for start in range(0, t, block):
        end = min(t, start + block)
        scores = jnp.einsum("bckgd,bskd->bkgcs", qg[:, start:end], k[:, :end])
        allowed = jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]
        scores = jnp.where(allowed, scores, NEG_INF)
        probs = _softmax_f32(scores).astype(v.dtype)
        outs.append(jnp.einsum("bkgcs,bskd->bckgd", probs, v[:, :end]))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
    return out.reshape(b, t, h, dh)


def cached_attention(q: Float[Array, "b t h dh"], keys_t: Float[Array, "b k dh s"],
                     values: Float[Array, "b k s dh"], positions: Int[Array, "b t"]
                     ) -> Float[Array, "b t h dh"]:
    """New tokens at `positions` attend to cache slots `<= position` (their own included)."""
    b, t, h, dh = q.shape
    kh = keys_t.shape[1]
    g = h // kh
    qg = q.reshape(b, t, kh, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, dh)
    scores = jnp.matmul(qg, keys_t)  # [b, k, g*t, s]
    slots = jnp.arange(keys_t.shape[-1])
    pos = jnp.broadcast_to(positions[:, None, None, :], (b, 1, g, t)).reshape(b, 1, g * t)
    scores = jnp.where(slots[None, None, None, :] <= pos[..., None], scores, NEG_INF)
    probs = _softmax_f32(scores).astype(values.dtype)
    out = jnp.matmul(probs, values)  # [b, k, g*t, dh]
    return out.reshape(b, kh, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def write_cache(keys_t: Float[Array, "b k dh s"], values: Float[Array, "b k s dh"],
                k: Float[Array, "b t k dh"], v: Float[Array, "b t k dh"], start: Int[Array, "b"]):
    """Writes `t` new key/value rows into each batch row's cache from slot `start[b]`."""
    kt = k.transpose(0, 2, 3, 1).astype(keys_t.dtype)  # [b, k, dh, t]
    vt = v.transpose(0, 2, 1, 3).astype(values.dtype)  # [b, k, t, dh]
    zero = jnp.zeros((), jnp.int32)

    def one(kc, vc, kn, vn, s):
        kc = jax.lax.dynamic_update_slice(kc, kn, (zero, zero, s))
        vc = jax.lax.dynamic_update_slice(vc, vn, (zero, s, zero))
        return kc, vc

    if keys_t.shape[0] == 1:  # the common decode case: no scatter
        kc, vc = one(keys_t[0], values[0], kt[0], vt[0], start[0])
        return kc[None], vc[None]
    return jax.vmap(one)(keys_t, values, kt, vt, start)
