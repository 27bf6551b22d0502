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


def init_trainable(params_tree: dict, lm, t, key, lora=None) -> dict:
    """The trainable pytree: {"h2mt"|"hmt": ..., "lora"?: ..., "backbone"?: ...}. `lora`: the
    adapters to start from (a loaded checkpoint's) when LoRA is trained; else fresh ones."""
    if t.trainable not in TRAINABLE:
        raise ConfigError(f"train.trainable must be one of {', '.join(TRAINABLE)}, got "
                          f"{t.trainable!r}")
    out = jax.tree.map(jnp.copy, dict(params_tree))  # copies: the train state is donated
    if t.trainable == "memory+lora":
        out["lora"] = (jax.tree.map(jnp.copy, lora) if lora is not None
                       else init_lora(lm.params, t.lora_rank, key))
    if t.trainable == "all":
        out["backbone"] = jax.tree.map(jnp.copy, lm.params)
    return out


def memory_overrides(h2mt, t):
    """A loaded checkpoint's H2MT with the memory settings of a config's `train` section put
    over it: `mem_tokens` > 0 (m memories per leaf, `H2MT.with_mem_tokens`), `mem_pool`
    ("write" | "mean": the same encoder, pooled another way) and `mem_layer` (a block count as
    text, "-1": final states; `H2MT.with_mem_layer`). Empty or 0 keeps the checkpoint's."""
    if t.get("mem_tokens", 0):
        h2mt = h2mt.with_mem_tokens(int(t.mem_tokens))
    if t.get("mem_pool", ""):
        h2mt = h2mt.with_config(mem_pool=str(t.mem_pool))
    layer = str(t.get("mem_layer", "")).strip()
    if layer:
        try:
            value = int(layer)
        except ValueError:
            raise ConfigError(f"train.mem_layer must be a whole number (-1: final states), got "
                              f"{layer!r}") from None
        h2mt = h2mt.with_mem_layer(value)
    return h2mt


class H2MTTrainable:
    """What the H²MT tasks (`h2mt_qa`, `memory_lm`) share: the trainable pytree from their
    `h2mt` (a loaded checkpoint's decoder adapters carried over), the frozen backbone, the H2MT
    of a trained pytree and its export (the starting H2MT's fitted hop gate carried over: no
    gradient reaches it). Needs `config`, `lm`, `h2mt` and `cfg`."""

    def init(self, key) -> dict:
        return init_trainable({"h2mt": self.h2mt.params}, self.lm, self.config.train, key,
                              lora=self.h2mt.lora)

    def frozen(self):
        return {} if self.config.train.trainable == "all" else self.lm.params

    def model(self, trainable):
        from h2mt_jax.hierarchy.h2mt import H2MT

        lm = self.lm.with_params(trainable["backbone"]) if "backbone" in trainable else self.lm
        return H2MT(lm, self.cfg, trainable["h2mt"], trainable.get("lora"),
                    lora_scale(self.config.train), self.h2mt.hop_gate)

    def export(self, trainable, directory) -> None:
        self.model(trainable).save(directory)
