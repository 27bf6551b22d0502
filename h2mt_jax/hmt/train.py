"""Training HMT for language modelling (the reference's objective).

A training example is a window of `bptt_depth` segments read from a fresh memory; the loss is the
next-token cross-entropy on the tokens of the last `loss_segments` segments, back-propagated
through every segment of the window (full BPTT; `remat` recomputes each segment's activations in
the backward pass to bound memory). Trainable: the HMT memory parameters and, optionally, LoRA
adapters on the backbone (the backbone itself stays frozen).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from h2mt_jax.backbone.lora import init_lora, merge_lora
from h2mt_jax.hmt.cell import run_segments
from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.hmt.model import HMT, token_nll


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 2
    bptt_depth: int = 4
    loss_segments: int = 1
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    clip: float = 1.0
    lora_rank: int = 0  # 0: memory parameters only
    lora_alpha: float = 16.0
    remat: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.bptt_depth < 1 or not 1 <= self.loss_segments <= self.bptt_depth:
            raise ValueError("need bptt_depth >= 1 and 1 <= loss_segments <= bptt_depth")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup, cosine decay and global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.lr, max(1, min(tc.warmup, tc.steps - 1)), max(tc.steps, 2), tc.lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(tc.clip),
                       optax.adamw(schedule, weight_decay=tc.weight_decay))


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
    """Mean next-token loss on the last `loss_segments` segments of each window."""
    model = nnx.merge(graphdef, merge_lora(bparams, trainable.get("lora"), lora_scale))
    _, (nll, count) = run_segments(
        model, trainable["hmt"], cfg, ids, lengths,
        lambda h, st, tgt: token_nll(model.logits(h), tgt), targets, remat=remat)
    return jnp.sum(nll[-loss_segments:]) / jnp.maximum(jnp.sum(count[-loss_segments:]), 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "cfg", "lora_scale",
                                             "loss_segments", "remat"),
                   donate_argnames=("trainable", "opt_state"))
def train_step(trainable, opt_state, graphdef, bparams, ids, targets, lengths, *, optimizer, cfg,
               lora_scale, loss_segments, remat):
    """One optimizer step; returns the new trainable params, optimizer state and metrics."""
    loss, grads = jax.value_and_grad(window_loss)(
        trainable, graphdef, bparams, ids, targets, lengths, cfg=cfg, lora_scale=lora_scale,
        loss_segments=loss_segments, remat=remat)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def sample_windows(tokens: np.ndarray, window: int, batch: int, rng: np.random.Generator):
    """`batch` random windows of `window` consecutive tokens."""
    if len(tokens) < window:
        raise ValueError(f"the training text has {len(tokens)} tokens, fewer than one window of "
                         f"{window} (bptt_depth x tokens per segment + 1)")
    starts = rng.integers(0, len(tokens) - window + 1, size=batch)
    return np.stack([tokens[s:s + window] for s in starts])


def train_lm(hmt: HMT, tokens: np.ndarray, tc: TrainConfig, progress: bool = True,
             log_every: int = 10, callback=None) -> tuple[HMT, list[dict]]:
    """Trains `hmt`'s memory parameters (and LoRA when `tc.lora_rank > 0`) on a token stream.

    Returns a new `HMT` and the per-step history (loss, grad_norm, tokens/s).
    """
    from tqdm.auto import tqdm

    cfg = hmt.config
    l = cfg.tokens_per_segment
    window = tc.bptt_depth * l + 1
    tokens = np.asarray(tokens, np.int32)
    rng = np.random.default_rng(tc.seed)
    trainable = {"hmt": jax.tree.map(jnp.asarray, hmt.params)}
    lora_scale = hmt.lora_scale
    if tc.lora_rank:
        trainable["lora"] = hmt.lora or init_lora(hmt.lm.params, tc.lora_rank,
                                                  jax.random.PRNGKey(tc.seed))
        lora_scale = tc.lora_alpha / tc.lora_rank
    optimizer = make_optimizer(tc)
    opt_state = optimizer.init(trainable)
    history = []
    bar = tqdm(range(tc.steps), desc="HMT training", disable=not progress)
    for step in bar:
        ids, targets, lengths = window_segments(sample_windows(tokens, window, tc.batch_size, rng), l)
        start = time.perf_counter()
        trainable, opt_state, m = train_step(
            trainable, opt_state, hmt.lm.graphdef, hmt.lm.params, jnp.asarray(ids),
            jnp.asarray(targets), jnp.asarray(lengths), optimizer=optimizer, cfg=cfg,
            lora_scale=lora_scale, loss_segments=tc.loss_segments, remat=tc.remat)
        loss = float(m["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}")
        dt = time.perf_counter() - start
        rec = {"step": step, "loss": loss, "grad_norm": float(m["grad_norm"]),
               "tokens_per_s": ids.size / dt, "seconds": dt}
        history.append(rec)
        if step % log_every == 0 or step == tc.steps - 1:
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if callback is not None:
            callback(rec)
    new = HMT(hmt.lm, cfg, trainable["hmt"], trainable.get("lora"), lora_scale)
    return new, history
