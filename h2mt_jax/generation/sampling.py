"""Next-token choice from logits: greedy, or temperature with nucleus (top-p) filtering."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from h2mt_jax.typing import Array, Float, Int


@flax.struct.dataclass
class Sampling:
    """`temperature == 0` means greedy; otherwise sample from the smallest set of tokens whose
    probability mass reaches `top_p`, after dividing the logits by `temperature`."""

    temperature: float = flax.struct.field(pytree_node=False, default=0.0)
    top_p: float = flax.struct.field(pytree_node=False, default=1.0)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def top_p_filter(logits: Float[Array, "b v"], top_p: float) -> Float[Array, "b v"]:
    """Sets to -inf every logit outside the nucleus of mass `top_p` (the top token always stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < top_p
    # The smallest kept logit is the threshold; ties at the threshold are kept.
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def choose(logits: Float[Array, "b v"], sampling: Sampling, key: Array) -> Int[Array, "b"]:
    """The next token per row."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = top_p_filter(logits.astype(jnp.float32) / sampling.temperature, sampling.top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
