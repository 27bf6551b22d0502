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


def window_loss(trainable, graphdef, bparams, ids, targets, lengths, *, cfg: HMTConfig,
                lora_scale: float, loss_segments: int, remat: bool):
    """Mean next-token loss on the last `loss_segments` segments of each window.

    `trainable`: {"hmt": memory params, "lora"?: adapters}; `bparams`: the backbone's params;
    ids, targets `[D, B, L]`, lengths `[D]` (from `window_segments`)."""
    model = nnx.merge(graphdef, merge_lora(bparams, trainable.get("lora"), lora_scale))
    _, (nll, count) = run_segments(
        model, trainable["hmt"], cfg, ids, lengths,
        lambda h, st, tgt: token_nll(model.logits(h), tgt), targets, remat=remat)
    return jnp.sum(nll[-loss_segments:]) / jnp.maximum(jnp.sum(count[-loss_segments:]), 1)
