"""What a task trains (`train.trainable`): its memory parameters, plus LoRA adapters or the whole
backbone; shared by every task."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from h2mt_jax.backbone.lora import init_lora
from h2mt_jax.errors import ConfigError

TRAINABLE = ("memory", "memory+lora", "all")


def lora_scale(t) -> float:
    """LoRA's `alpha / rank` of a config's `train` section."""
    return t.lora_alpha / max(t.lora_rank, 1)


def init_trainable(params_tree: dict, lm, t, key) -> dict:
    """The trainable pytree: {"h2mt"|"hmt": ..., "lora"?: ..., "backbone"?: ...}."""
    if t.trainable not in TRAINABLE:
        raise ConfigError(f"train.trainable must be one of {', '.join(TRAINABLE)}, got "
                          f"{t.trainable!r}")
    out = jax.tree.map(jnp.copy, dict(params_tree))  # copies: the train state is donated
    if t.trainable == "memory+lora":
        out["lora"] = init_lora(lm.params, t.lora_rank, key)
    if t.trainable == "all":
        out["backbone"] = jax.tree.map(jnp.copy, lm.params)
    return out
