"""The Llama-family decoder as Flax NNX modules.

Layout choices made for speed on CPU and accelerators alike:
- q/k/v projections are fused into one `[d, q + 2 kv]` kernel and gate/up into one `[d, 2 f]`
  kernel (the loaders concatenate the checkpoint's separate matrices);
- the layers are a Python list (unrolled at trace time): during single-token decoding every
  layer's weights are read in place, where a `scan` over stacked weights would copy a slice of them
  per step.

Entry points take input embeddings (`embed` turns ids into them), so memory methods can feed
vectors that are not tokens. Heavy paths run under `jax.jit` in their callers (`h2mt_jax.lm`, `h2mt_jax.generation`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.attention import KVCache, cached_attention, causal_attention, write_cache
from h2mt_jax.backbone.config import BackboneConfig
from h2mt_jax.backbone.rope import (apply_rope, inverse_frequencies, rope_tables,
                                    static_rope_tables)
from h2mt_jax.typing import Array, Float, Int


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Dense(nnx.Module):
    """`x @ kernel (+ bias)` with a `[in, out]` kernel."""

    def __init__(self, din: int, dout: int, *, use_bias: bool = False, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(_normal(rngs, (din, dout), dtype))
        self.bias = nnx.Param(jnp.zeros((dout,), dtype)) if use_bias else None

    def __call__(self, x: Float[Array, "... din"]) -> Float[Array, "... dout"]:
        y = jnp.dot(x.astype(self.kernel.dtype), self.kernel[...])
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32, as transformers' LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * xf.astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: BackboneConfig, *, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.qkv = Dense(cfg.hidden_size, cfg.q_dim + 2 * cfg.kv_dim, use_bias=cfg.attention_bias,
                         dtype=dtype, rngs=rngs)
        self.o = Dense(cfg.q_dim, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, cache_kv=None, positions=None, start=None):
        cfg = self.cfg
        b, t, _ = x.shape
        qkv = self.qkv(x)
        q = qkv[..., :cfg.q_dim].reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = qkv[..., cfg.q_dim:cfg.q_dim + cfg.kv_dim].reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[..., cfg.q_dim + cfg.kv_dim:].reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        q = apply_rope(q, cos, sin) * jnp.asarray(cfg.head_dim ** -0.5, q.dtype)
        k = apply_rope(k, cos, sin)
        if cache_kv is None:  # self-attention over this sequence only
            out, new_kv = causal_attention(q, k, v), (k, v)
        else:
            new_kv = write_cache(*cache_kv, k, v, start)
            out = cached_attention(q, *new_kv, positions)
        return self.o(out.reshape(b, t, cfg.q_dim)), new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: BackboneConfig, *, dtype, rngs: nnx.Rngs):
        self.f = cfg.intermediate_size
        self.gate_up = Dense(cfg.hidden_size, 2 * self.f, dtype=dtype, rngs=rngs)
        self.down = Dense(self.f, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        gu = self.gate_up(x)
        return self.down(jax.nn.silu(gu[..., :self.f]) * gu[..., self.f:])


class Block(nnx.Module):
    def __init__(self, cfg: BackboneConfig, *, dtype, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, cache_kv=None, positions=None, start=None):
        a, new_kv = self.attn(self.attn_norm(x), cos, sin, cache_kv, positions, start)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), new_kv


class Llama(nnx.Module):
    """A Llama-family decoder: embedding, `num_layers` blocks, final norm, LM head."""

    def __init__(self, cfg: BackboneConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embedding = nnx.Param(_normal(rngs, (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        Dense(cfg.hidden_size, cfg.vocab_size, dtype=dtype, rngs=rngs))

    @property
    def dtype(self):
        return self.embedding.dtype

    def embed(self, ids: Int[Array, "b t"]) -> Float[Array, "b t d"]:
        return jnp.take(self.embedding[...], ids, axis=0)

    def logits(self, hidden: Float[Array, "... d"]) -> Float[Array, "... v"]:
        """LM head on final-norm hidden states; float32 logits."""
        if self.lm_head is None:
            w = self.embedding[...]
            out = jnp.einsum("...d,vd->...v", hidden.astype(w.dtype), w)
        else:
            out = self.lm_head(hidden)
        return out.astype(jnp.float32)

    def __call__(self, x: Float[Array, "b t d"], positions: Int[Array, "b t"] | None = None,
                 cache: KVCache | None = None, residual_at: int | None = None,
                 inject: tuple | None = None):
        """Runs the blocks over input embeddings.

        Without `cache`: causal self-attention over the `t` tokens (positions default to 0..t-1);
        returns final-norm hidden states and each layer's `(k, v)` `[b, t, K, Dh]`.
        With `cache`: the tokens are written at slots `cache.lengths[b] + i` and attend to the
        cache; returns hidden states and the updated per-layer `(keys_t, values)`.
        With `residual_at` = L (0..num_layers), also returns, third, the residual stream after
        the first L blocks `[b, t, d]` (0: the input embeddings; no norm applied).
        With `inject` = (L, mask `[b, t]`, states `[b, t, d]`), 1 <= L < num_layers: before
        block L the residual stream of the masked positions is replaced by `states` (how the
        `memory` reading puts inner-layer memories into the answer pass, `H2MTConfig.mem_layer`).
        """
        b, t, _ = x.shape
        start = None
        inv_freq = inverse_frequencies(self.cfg)
        if cache is not None:
            start = cache.lengths
            positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        if positions is None:
            cos, sin = static_rope_tables(inv_freq, b, t)
        else:
            cos, sin = rope_tables(inv_freq, positions)
        x = x.astype(self.dtype)
        kvs = []
        if residual_at is not None and not 0 <= residual_at <= len(self.layers):
            raise ValueError(f"residual_at must be in 0..{len(self.layers)}, got {residual_at}")
        if inject is not None and not 1 <= inject[0] < len(self.layers):
            raise ValueError(f"inject's block must be in 1..{len(self.layers) - 1}, got "
                             f"{inject[0]}")
        residual = x
        for i, layer in enumerate(self.layers):
            if inject is not None and i == inject[0]:
                x = jnp.where(inject[1][..., None], inject[2].astype(x.dtype), x)
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, kv = layer(x, cos, sin, layer_cache, positions, start)
            kvs.append(kv)
            if residual_at == i + 1:
                residual = x
        if residual_at is None:
            return self.norm(x), kvs
        return self.norm(x), kvs, residual
