"""How the answer pass reads a leaf's `m` memories, differentiably, and the memory pretraining
loss (task `memory_lm`, docs/algorithms.md).

Two readings, the same as `H2MT.answer` at inference:
- "memory": the write tokens' final hidden states, through `read`, as input embeddings of
  `pre ‖ memories ‖ post`;
- "memory_kv": the write tokens' per-layer keys (before RoPE) and values, written into the KV
  cache after `pre` (`generation.kv_prompt.write_segment`), then `post` attends to them.

The memories come from the encoder: the backbone with the encoder adapters (`enc_lora`); the
reader is the backbone with the decoder adapters (`lora`). Pretraining objectives on plain text
cut into leaves, as in ICAE and COCOM:
- reconstruction: `pre ‖ memories(leaf) ‖ cue ‖ leaf` regenerates the leaf's tokens;
- continuation: `pre ‖ memories(leaf) ‖ cue ‖ next leaf` predicts the following leaf.
They differ only in an example's `post` tokens and labels (`train.memory_lm` builds them).

A pretraining batch is a dict of `leaf [B, T]`, `leaf_len [B]`, `pre [B, P]`, `post [B, S]`,
`labels [B, S]` (-1: no loss; label `j` is the token after `post[j]`), `mode [B]` (0 memory,
1 memory_kv; one value per batch) and `objective [B]` (0 reconstruction, 1 continuation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.generation.decode import prefill_cache
from h2mt_jax.generation.kv_prompt import write_segment
from h2mt_jax.hierarchy.memory import encoder_params, leaf_pass, memory_prompt
from h2mt_jax.hmt.loss import token_nll
from h2mt_jax.typing import Array, Float, Int

READ_MODES = ("memory", "memory_kv")


def encode_write(model, params, tokens: Int[Array, "b t"], lengths: Int[Array, "b"],
                 pool: str = "write", layer: int = -1):
    """The encoder pass over leaves (`memory.leaf_pass`, `pool` = `H2MTConfig.mem_pool`,
    `layer` = `H2MTConfig.mem_layer`):
    memories `[b, m, d]` and their keys (before RoPE) and values
    `[layers, b, m, kv_heads, head_dim]`, float32."""
    return leaf_pass(model, params, tokens, lengths, pool, layer)[:3]


def read_hidden(model, params, mode: str, pre: Int[Array, "b p"], mem: Float[Array, "b n d"],
                keys: Float[Array, "layers b n kh dh"], values: Float[Array, "layers b n kh dh"],
                post_embeds: Float[Array, "b s d"], layer: int = -1) -> Float[Array, "b s d"]:
    """The reader's final hidden states at the `post` positions of `pre ‖ memories ‖ post`,
    the memories read as `mode` ("memory": `mem` as embeddings, put into the residual stream
    at block `layer` = `H2MTConfig.mem_layer` when >= 1, `memory.memory_prompt`; "memory_kv":
    `keys`/`values` as a KV segment). Every row's `pre` has the full length `p`."""
    b, p = pre.shape
    n = mem.shape[1]
    if mode == "memory":
        x, inject = memory_prompt(params, layer, model.embed(pre), mem, post_embeds)
        return model(x, inject=inject)[0][:, p + n:]
    if mode != "memory_kv":
        raise ValueError(f"mode must be one of {READ_MODES}, got {mode!r}")
    return kv_read(model, pre, jnp.full((b,), p, jnp.int32), keys, values, post_embeds)


def kv_read(model, pre: Int[Array, "b p"], pre_len: Int[Array, "b"],
            keys: Float[Array, "layers b n kh dh"], values: Float[Array, "layers b n kh dh"],
            post_embeds: Float[Array, "b s d"]) -> Float[Array, "b s d"]:
    """`post`'s hidden states after each row's first `pre_len[b]` tokens of `pre` and a KV
    segment written right after them (the `memory_kv` reading, differentiable)."""
    p, n, s = pre.shape[1], keys.shape[2], post_embeds.shape[1]
    _, cache = prefill_cache(model, model.embed(pre), pre_len, p + n + s)
    cache = write_segment(cache, keys, values, pre_len, model.cfg)
    return model(post_embeds, cache=cache)[0]


def labelled_nll(model, hidden: Float[Array, "b s d"], labels: Int[Array, "b s"]):
    """(summed NLL, count) of the labels (-1: none)."""
    return token_nll(model.logits(hidden), labels)


def models(trainable: dict, backbone_params, graphdef, lora_scale: float):
    """(encoder, reader) modules: the (trained or frozen) backbone with the encoder adapters,
    and with the decoder adapters."""
    base = trainable.get("backbone", backbone_params)
    params = trainable["h2mt"]
    encoder = nnx.merge(graphdef, encoder_params(base, params))
    reader = nnx.merge(graphdef, merge_lora(base, trainable.get("lora"), lora_scale))
    return encoder, reader


def pretrain_loss(trainable: dict, backbone_params, graphdef, batch: dict, *,
                  lora_scale: float, pool: str = "write", layer: int = -1):
    """(mean NLL per labelled token, metrics) of a pretraining batch; the batch's `mode[0]`
    picks the reading (`jax.lax.cond`: one reader pass per step); `pool`, `layer`:
    `H2MTConfig.mem_pool`, `H2MTConfig.mem_layer`."""
    params = trainable["h2mt"]
    encoder, reader = models(trainable, backbone_params, graphdef, lora_scale)
    mem, keys, values = encode_write(encoder, params, batch["leaf"], batch["leaf_len"], pool,
                                     layer)
    post = reader.embed(batch["post"])

    def nll(mode):
        hidden = read_hidden(reader, params, mode, batch["pre"], mem, keys, values, post,
                             layer)
        return labelled_nll(reader, hidden, batch["labels"])

    total, count = jax.lax.cond(batch["mode"][0] == 0, lambda: nll("memory"),
                                lambda: nll("memory_kv"))
    loss = total / jnp.maximum(count, 1)
    return loss, {"mode": batch["mode"][0].astype(jnp.float32),
                  "objective": batch["objective"][0].astype(jnp.float32),
                  "tokens": count.astype(jnp.float32)}
