"""The HMT language-modelling objective (the reference's), as pure functions.

A training example is a window of `D` segments read from a fresh memory; the loss is the
next-token cross-entropy on the tokens of the last `loss_segments` segments, back-propagated
through every segment of the window (full BPTT; `remat` recomputes each segment's activations in
the backward pass to bound memory). The training loop is the project's one trainer
(`h2mt_jax.train.trainer`, task `hmt_lm`: `h2mt_jax.train.hmt_lm.HMTLMTask`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.hmt.cell import run_segments
from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.typing import Array, Float, Int


def token_nll(logits, targets):
    """Summed negative log-likelihood of targets (`-1` = no target) and the target count."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    valid = targets >= 0
    picked = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(jnp.where(valid, picked, 0.0)), jnp.sum(valid)


def window_segments(windows: np.ndarray, tokens_per_segment: int):
    """`[B, D*L + 1]` token windows -> ids, targets `[D, B, L]` and lengths `[D]`."""
    b, n = windows.shape
    l = tokens_per_segment
    d = (n - 1) // l
    if d < 1 or n != d * l + 1:
        raise ValueError(f"a window must hold D*{l} + 1 tokens, got {n}")
    seg = lambda a: a.reshape(b, d, l).transpose(1, 0, 2)  # noqa: E731
    return seg(windows[:, :-1]), seg(windows[:, 1:]), np.full((d,), l, np.int32)


def chunked_nll(head, hidden: Float[Array, "n d"], targets: Int[Array, "n"], chunk: int = 0
                ) -> tuple[Float[Array, ""], Int[Array, ""]]:
    """`token_nll(head(hidden), targets)` without holding all `[n, V]` logits at once.

    `chunk` > 0: the tokens go through the head `chunk` at a time under `jax.checkpoint`, so the
    backward pass keeps only the hidden states and recomputes each chunk's logits; 0: one piece."""
    n = hidden.shape[0]
    if chunk <= 0 or chunk >= n:
        return token_nll(head(hidden), targets)
    pad = -n % chunk
    h = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk, hidden.shape[-1])
    t = jnp.pad(targets, (0, pad), constant_values=-1).reshape(-1, chunk)

    @jax.checkpoint
    def one(carry, xs):
        nll, count = token_nll(head(xs[0]), xs[1])
        return (carry[0] + nll, carry[1] + count.astype(jnp.int32)), None

    (nll, count), _ = jax.lax.scan(one, (jnp.float32(0), jnp.int32(0)), (h, t))
    return nll, count


def window_loss(trainable, graphdef, bparams, ids, targets, lengths, *, cfg: HMTConfig,
                lora_scale: float, loss_segments: int, remat: bool | str = False,
                logit_chunk: int = 0):
    """Mean next-token loss on the last `loss_segments` segments of each window.

    `trainable`: {"hmt": memory params, "lora"?: adapters}; `bparams`: the backbone's params;
    ids, targets `[D, B, L]`, lengths `[D]` (from `window_segments`). Only the loss segments go
    through the LM head (the reference computes logits for every segment and drops most);
    `logit_chunk` bounds the logits held at once (`chunked_nll`). Every segment of a window is
    real, so the recurrence runs without the padding test and with the summary queries batched
    (`run_segments(skip_padding=False)`)."""
    model = nnx.merge(graphdef, merge_lora(bparams, trainable.get("lora"), lora_scale))
    _, hidden = run_segments(model, trainable["hmt"], cfg, ids, lengths,
                             lambda h, st, e: h, remat=remat,
                             skip_padding=False)  # [D, B, L, d]
    h = hidden[-loss_segments:]
    nll, count = chunked_nll(model.logits, h.reshape(-1, h.shape[-1]),
                             targets[-loss_segments:].reshape(-1), logit_chunk)
    return nll / jnp.maximum(count, 1)
