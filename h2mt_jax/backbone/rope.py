"""Rotary position embeddings in the Hugging Face (rotate-half) layout, with Llama-3 scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from h2mt_jax.backbone.config import BackboneConfig
from h2mt_jax.typing import Array, Float, Int


def inverse_frequencies(cfg: BackboneConfig) -> np.ndarray:
    """Per-pair inverse frequencies `[head_dim // 2]` (float32), Llama-3 scaled when configured."""
    dim = cfg.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(cfg.rope_theta) ** exponents)).astype(np.float32)
    if cfg.rope_freq_factors is not None:  # explicit per-pair factors (llama.cpp's rope_freqs)
        return (inv_freq / np.asarray(cfg.rope_freq_factors, np.float32)).astype(np.float32)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    # Llama 3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(inv_freq: np.ndarray, positions: Int[Array, "b t"]) -> tuple[
        Float[Array, "b t dh"], Float[Array, "b t dh"]]:
    """cos and sin tables `[B, T, head_dim]` for integer positions."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def static_rope_tables(inv_freq: np.ndarray, batch: int, length: int) -> tuple[
        np.ndarray, np.ndarray]:
    """`rope_tables` for positions 0..length-1, computed on the host.

    Inside a jitted program these are constants, so XLA can fuse RoPE into every consumer of the
    rotated keys without recomputing the sines and cosines there.
    """
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    shape = (batch, length, angles.shape[-1])
    return (np.broadcast_to(np.cos(angles), shape), np.broadcast_to(np.sin(angles), shape))


def apply_rope(x: Float[Array, "b t h dh"], cos: Float[Array, "b t dh"],
               sin: Float[Array, "b t dh"]) -> Float[Array, "b t h dh"]:
    """Rotates query or key heads: `x * cos + rotate_half(x) * sin`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin
