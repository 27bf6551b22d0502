"""Node memories: leaves through learnable write tokens, parents by a bottom-up level sweep.

- `leaf_memories`: with `mem_pool="write"`, `mem(leaf) = f([E(leaf tokens) ‖ M_w])` at the `m`
  write positions, which sit right after each leaf's last real token (padding after them is never
  attended to); with `mem_pool="mean"`, the leaf alone runs through `f` and its tokens are cut
  into `m` runs of consecutive tokens, each run's hidden states (and per-layer keys and values)
  averaged into one memory (mean pooling, arXiv 2510.20797): a memory carries its run's tokens
  from the first step, where a write token has to learn to gather them.
- `sweep`: for height h = 1..H, every node of that height is computed in one batched call from
  its children's memories (`jax.lax.scan` over heights; a parent never runs before its
  children). Aggregators: `backbone` (`f([child memories ‖ M_a])` at `m` write positions),
  `attention` (learnable-query pooling), `mean`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.lora import init_lora, merge_lora
from h2mt_jax.generation.kv_prompt import unrope
from h2mt_jax.hierarchy.config import MEM_POOLS, H2MTConfig
from h2mt_jax.hierarchy.tree import Tree
from h2mt_jax.hmt.cell import init_params as init_hmt_params
from h2mt_jax.hmt.cell import run_segments
from h2mt_jax.shapes import bucket
from h2mt_jax.typing import Array, Bool, Float, Int

H2MTParams = dict
ENC_LORA_SCALE = 2.0  # alpha / rank of the encoder adapters (alpha = 2 rank)


def init_params(hidden_size: int, embedding_std: float, cfg: H2MTConfig, key: Array,
                backbone_params=None) -> H2MTParams:
    """Write tokens, pooling queries and the summary prompt ~ N(0,1)·std(E); the routing
    projections W_q = W_k start equal, so untrained routing ranks nodes by the similarity of
    their memory to the question summary. With `cfg.enc_lora_rank`, also `enc_lora`: LoRA
    adapters (of `backbone_params`' kernels, zero at start) that every memory pass merges."""
    ks = jax.random.split(key, 6)
    m, d = cfg.mem_tokens, hidden_size
    normal = lambda k, shape: jax.random.normal(k, shape) * embedding_std  # noqa: E731
    w = jax.random.normal(ks[4], (d, cfg.recall_dim)) / np.sqrt(d)
    params = {"leaf_write": normal(ks[0], (m, d)), "agg_write": normal(ks[1], (m, d)),
              "agg_query": normal(ks[2], (m, d)), "summary": normal(ks[3], (1, d)),
              "w_q": w, "w_k": jnp.array(w, copy=True),
              # memories are final-norm hidden states; `read` maps them into the input
              # embedding space of the answer prompt (H2MT.create rescales it to match norms)
              "read": jnp.eye(d, dtype=jnp.float32)}
    if cfg.leaf_mode == "hmt":
        params["hmt"] = init_hmt_params(d, embedding_std, cfg.hmt, ks[5])
    if cfg.enc_lora_rank:
        if backbone_params is None:
            raise ValueError("enc_lora_rank > 0 needs the backbone's params to shape the adapters")
        params["enc_lora"] = init_lora(backbone_params, cfg.enc_lora_rank,
                                       jax.random.fold_in(key, 7))
    return params


WRITE_TOKEN_PARAMS = ("leaf_write", "agg_write", "agg_query")  # the `[m, d]` parameters


def resize_write_tokens(params: H2MTParams, m: int) -> H2MTParams:
    """`params` with `m` write tokens, pooling queries and aggregator write tokens (`[m, d]`)
    instead of their current count `m0`: the first `m` rows when `m <= m0`, else the `m0` rows
    repeated in order until there are `m` (each copy sits at another position, so it writes
    something else). Everything else is shared with `params`. For measuring F1 against `m`
    from one trained checkpoint (train.mem_tokens); the resized rows still need training."""
    if m < 1:
        raise ValueError(f"mem_tokens must be >= 1, got {m}")
    out = dict(params)
    for name in WRITE_TOKEN_PARAMS:
        x = params[name]
        reps = -(-m // x.shape[0])
        out[name] = jnp.concatenate([x] * reps, axis=0)[:m] if reps > 1 else x[:m]
    return out


def encoder_params(bparams, params: H2MTParams):
    """The backbone weights of the memory passes (leaves, parents): `bparams` with the encoder
    adapters `params["enc_lora"]` merged when there are any. The answer pass never uses them."""
    return merge_lora(bparams, params.get("enc_lora"), ENC_LORA_SCALE)


def read_memories(params: H2MTParams, mem: Float[Array, "... d"]) -> Float[Array, "... d"]:
    """Memory vectors as answer-prompt input embeddings."""
    return mem @ params["read"] if "read" in params else mem


def memory_prompt(params: H2MTParams, layer: int, head: Float[Array, "b p d"],
                  mem: Float[Array, "b n d"], tail: Float[Array, "b s d"]):
    """The answer pass's input for `head ‖ memories ‖ tail` (embeddings) under the `memory`
    reading: (embeddings `[b, p+n+s, d]`, `inject` for `Llama.__call__` or None). The memory
    slots' input embeddings are `read(mem)`; with `layer` >= 1 (`H2MTConfig.mem_layer`: the
    memories are the encoder's states after `layer` blocks) their residual stream is replaced
    before block `layer` by `mem @ params["inject"]`, so the answer pass's blocks from `layer` on
    read them where the encoder took them, as the text's own states would be."""
    p = head.shape[1]
    n, s = mem.shape[1], tail.shape[1]
    dtype = head.dtype
    x = jnp.concatenate([head, read_memories(params, mem).astype(dtype), tail.astype(dtype)], 1)
    return x, memory_inject(params, layer, mem, p, p + n + s)


def memory_inject(params: H2MTParams, layer: int, mem: Float[Array, "b n d"], start,
                  t: int) -> tuple | None:
    """`Llama.__call__`'s `inject` for memories sitting at positions `start .. start+n-1` of a
    `t`-position prompt (`start` may be traced): before block `layer` their residual stream
    becomes `mem @ params["inject"]`. None when `layer` < 1 (`memory_prompt`)."""
    if layer < 1:
        return None
    b, n, d = mem.shape
    at = jnp.arange(t)
    mask = jnp.broadcast_to((at >= start) & (at < start + n), (b, t))
    states = jax.lax.dynamic_update_slice(jnp.zeros((b, t, d), jnp.float32),
                                          mem.astype(jnp.float32) @ params["inject"],
                                          (0, start, 0))
    return layer, mask, states


@functools.partial(jax.jit, static_argnames=("graphdef", "layer"))
def _slot_kv(graphdef, aparams, params: H2MTParams, layer: int, prefix: Int[Array, "p"],
             mem: Float[Array, "b m d"]):
    model = nnx.merge(graphdef, aparams)
    b, p = mem.shape[0], prefix.shape[0]
    head = model.embed(jnp.broadcast_to(prefix[None], (b, p)))
    x, inject = memory_prompt(params, layer, head, mem, jnp.zeros((b, 0, head.shape[-1]),
                                                                   head.dtype))
    _, kvs = model(x, inject=inject)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
    keys = jnp.stack([unrope(k, positions, model.cfg)[:, p:] for k, _ in kvs])
    values = jnp.stack([v[:, p:] for _, v in kvs])
    return keys.astype(jnp.float32), values.astype(jnp.float32)


def memory_slot_kv(graphdef, aparams, backbone_cfg, params: H2MTParams, layer: int, prefix,
                   mem: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Every layer's keys (before RoPE) and values of the `memory` reading's slots, node by
    node: each node's `m` memories `mem` `[n, m, d]` run through the answer backbone `aparams`
    (decoder adapters merged; its `BackboneConfig` `backbone_cfg`) after the `prefix` token ids (the chat preamble), read and injected
    as `memory_prompt` does -> float32 host arrays `[n, layers, m, kv_heads, head_dim]`.

    The slots come before the question in the answer prompt, so their keys and values do not
    depend on it: stored in an index (`LeafKV.slot_k`), they let a `memory` answer prefill only
    the question (`H2MT.answer`), as `memory_kv` does. Each node's slots attend to the prefix and
    to themselves, not to the other selected nodes' slots (one joint prompt does); on the held-out
    manuals this gave the same answers' F1 (`bench/results/memory_slot_cache`)."""
    n, m = mem.shape[0], mem.shape[1]
    pre = jnp.asarray(np.asarray(prefix, np.int32))
    cfg = backbone_cfg
    ks = np.zeros((n, cfg.num_layers, m, cfg.num_kv_heads, cfg.head_dim), np.float32)
    vs = np.zeros_like(ks)
    i = 0
    for lb in leaf_batch_sizes(n, batch):  # powers of two: few compiled shapes for any count
        chunk = np.asarray(mem[i:i + lb], np.float32)
        x = np.concatenate([chunk, np.zeros((lb - len(chunk),) + chunk.shape[1:], np.float32)])
        k, v = _slot_kv(graphdef, aparams, params, layer, pre, jnp.asarray(x))
        ks[i:i + len(chunk)] = np.asarray(k)[:, :len(chunk)].transpose(1, 0, 2, 3, 4)
        vs[i:i + len(chunk)] = np.asarray(v)[:, :len(chunk)].transpose(1, 0, 2, 3, 4)
        i += len(chunk)
    return ks, vs


def unit_rms(x: Float[Array, "... d"], eps: float = 1e-6) -> Float[Array, "... d"]:
    """`x` scaled to unit root-mean-square per vector (a norm with no learned scale)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def memory_states(model, embeds: Float[Array, "b t d"], layer: int = -1):
    """The backbone over `embeds` -> (the states memories are read from `[b, t, d]`, each
    layer's `(k, v)`): with `layer` = -1 the final-norm hidden states, else the residual stream
    after the first `layer` blocks scaled to unit RMS (`H2MTConfig.mem_layer`)."""
    if layer == -1:
        return model(embeds)
    _, kvs, residual = model(embeds, residual_at=layer)
    return unit_rms(residual), kvs


def _hidden(model, embeds, layer: int = -1):
    return memory_states(model, embeds, layer)[0]


def with_write_tokens(x: Float[Array, "b t d"], n: Int[Array, "b"], write: Float[Array, "m d"]):
    """`x` rows with `m` write tokens placed at `n[b] .. n[b]+m-1`, zeros after them."""
    b, t, d = x.shape
    m = write.shape[0]
    x = jnp.concatenate([x, jnp.zeros((b, m, d), x.dtype)], axis=1)
    pos = jnp.arange(t + m)[None, :]
    j = pos - n[:, None]
    is_write = (j >= 0) & (j < m)
    w = write.astype(x.dtype)[jnp.clip(j, 0, m - 1)]
    return jnp.where(is_write[..., None], w, jnp.where((j < 0)[..., None], x, 0))


def _read_write_tokens(h: Float[Array, "b t d"], n: Int[Array, "b"], m: int):
    idx = n[:, None] + jnp.arange(m)[None, :]
    return jnp.take_along_axis(h, idx[..., None], axis=1).astype(jnp.float32)  # [b, m, d]


def encode_with_write_tokens(model, x, n, write, layer: int = -1):
    """Backbone over `x` with write tokens after `n[b]` real positions -> `[b, m, d]`, the
    write positions' states (`memory_states` of `layer`)."""
    h = _hidden(model, with_write_tokens(x, n, write), layer)
    return _read_write_tokens(h, n, write.shape[0])


def pool_weights(lengths: Int[Array, "b"], t: int, m: int) -> Float[Array, "b m t"]:
    """Mean-pooling weights: run `j` of a leaf of `n` tokens covers tokens
    `[j n // m, max((j + 1) n // m, j n // m + 1))`, so every run holds at least one token (a
    leaf shorter than `m` repeats tokens) and padding (`>= n`) is never pooled."""
    n = jnp.maximum(lengths.astype(jnp.int32), 1)[:, None]  # [b, 1]
    j = jnp.arange(m, dtype=jnp.int32)[None]  # [1, m]
    start = j * n // m
    end = jnp.maximum((j + 1) * n // m, start + 1)
    i = jnp.arange(t, dtype=jnp.int32)[None, None]
    inside = (i >= start[..., None]) & (i < end[..., None])
    return inside.astype(jnp.float32) / (end - start)[..., None].astype(jnp.float32)


def leaf_pass(model, params: H2MTParams, tokens: Int[Array, "b t"], lengths: Int[Array, "b"],
              pool: str = "write", layer: int = -1):
    """The encoder pass over leaves (`model`: the backbone with the encoder adapters merged) ->
    (memories `[b, m, d]`, their keys before RoPE and values `[layers, b, m, kv_heads,
    head_dim]`, the leaf tokens' own keys and values `[layers, b, t, kv_heads, head_dim]`), all
    float32. `pool` (`MEM_POOLS`): "write" reads the `m` write tokens placed after each leaf's
    `lengths[b]` tokens; "mean" averages `m` runs of the leaf's own tokens (`pool_weights`).
    `layer` (`H2MTConfig.mem_layer`): the states memories are read from (`memory_states`); the
    keys and values are every layer's either way."""
    if pool not in MEM_POOLS:
        raise ValueError(f"mem_pool must be one of {MEM_POOLS}, got {pool!r}")
    write = params["leaf_write"]
    m = write.shape[0]
    t = tokens.shape[1]
    x = model.embed(tokens)
    if pool == "write":
        x = with_write_tokens(x, lengths, write)
    h, kvs = memory_states(model, x, layer)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
    keys = jnp.stack([unrope(k, positions, model.cfg) for k, _ in kvs]).astype(jnp.float32)
    values = jnp.stack([v for _, v in kvs]).astype(jnp.float32)
    if pool == "write":
        mem = _read_write_tokens(h, lengths, m)
        idx = lengths[:, None] + jnp.arange(m, dtype=jnp.int32)[None]  # [b, m]
        gather = idx[None, :, :, None, None]
        mem_k = jnp.take_along_axis(keys, gather, axis=2)
        mem_v = jnp.take_along_axis(values, gather, axis=2)
    else:
        w = pool_weights(lengths, t, m)
        mem = jnp.einsum("bmt,btd->bmd", w, h.astype(jnp.float32))
        mem_k = jnp.einsum("bmt,lbtkd->lbmkd", w, keys)
        mem_v = jnp.einsum("bmt,lbtkd->lbmkd", w, values)
    return (mem.astype(jnp.float32), mem_k, mem_v, keys[:, :, :t], values[:, :, :t])


@functools.partial(jax.jit, static_argnames=("graphdef", "pool", "layer"))
def _encode_leaves(graphdef, bparams, params, tokens, lengths, pool="write", layer=-1):
    """The leaves' memories `[b, m, d]` (`leaf_pass`; the unused keys/values are traced away)."""
    model = nnx.merge(graphdef, encoder_params(bparams, params))
    return leaf_pass(model, params, tokens, lengths, pool, layer)[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "pool", "layer"))
def _encode_leaves_kv(graphdef, bparams, params, tokens, lengths, pool="write", layer=-1):
    """`_encode_leaves` plus the same pass's keys (before RoPE) and values, float32: the
    memories' `[layers, b, m, kv_heads, head_dim]` and the leaf tokens' `[layers, b, t, ...]`."""
    model = nnx.merge(graphdef, encoder_params(bparams, params))
    return leaf_pass(model, params, tokens, lengths, pool, layer)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _leaf_token_kv(graphdef, bparams, tokens, prefix):
    """Every layer's keys (before RoPE) and values of the leaves' own tokens, each leaf run
    after the same `prefix` tokens `[p]` (p may be 0): `[layers, b, t, kv_heads, head_dim]`."""
    model = nnx.merge(graphdef, bparams)
    b, p = tokens.shape[0], prefix.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(prefix[None], (b, p)), tokens], axis=1)
    _, kvs = model(model.embed(x))
    positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape)
    keys = jnp.stack([unrope(k, positions, model.cfg)[:, p:] for k, _ in kvs])
    values = jnp.stack([v[:, p:] for _, v in kvs])
    return keys.astype(jnp.float32), values.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "hmt_cfg"))
def _encode_leaves_hmt(graphdef, bparams, hmt_params, tokens, lengths, hmt_cfg):
    model = nnx.merge(graphdef, bparams)
    l = hmt_cfg.tokens_per_segment
    ids = jnp.pad(tokens, ((0, 0), (0, l - tokens.shape[1])))[:, None, :]  # [leaves, 1, L]
    _, mems = run_segments(model, hmt_params, hmt_cfg, ids, lengths, lambda h, st, e: st.memory)
    return mems[:, 0, None, :]  # [leaves, 1, d]


@dataclasses.dataclass
class LeafPassKV:
    """Keys (before RoPE) and values of the leaf pass, per leaf, as float32 host arrays
    `[layers, tokens, kv_heads, head_dim]`: the leaf's own tokens (`leaf_k`, `leaf_v`) and its
    `m` memories (`write_k`, `write_v`: the write tokens', or the pooled runs' with
    `mem_pool="mean"`)."""

    leaf_k: list[np.ndarray]
    leaf_v: list[np.ndarray]
    write_k: list[np.ndarray]
    write_v: list[np.ndarray]


def leaf_memories(graphdef, bparams, params: H2MTParams, cfg: H2MTConfig,
                  tokens: np.ndarray, lengths: np.ndarray, progress: bool = False,
                  with_kv: bool = False, kv_params=None, kv_prefix=()):
    """Memories of the given leaves `[n, T]` -> `[n, m, d]` (host array); with `with_kv`, also
    the pass's keys and values (`LeafPassKV`), from the same pass. With `kv_params` (the
    answer pass's backbone weights, when they differ from the encoder's) or `kv_prefix` (token
    ids every leaf is run after, `prompts.chat_preamble`), the leaves' own tokens' keys and
    values come from a second pass with those weights after that prefix, so that `leaf_kv`
    answers read what the answer pass computes from the text; the write tokens' keys and
    values stay the encoder's, from the leaf alone.

    `independent`: batches of `cfg.leaf_batch` leaves per call (bounded memory for any count);
    `hmt`: all leaves in document order through one HMT scan (no KV: the cell's passes see
    more than the leaf)."""
    from tqdm.auto import tqdm

    n = len(tokens)
    if with_kv and cfg.leaf_mode == "hmt":
        raise ValueError("leaf KV caches need leaf_mode='independent' (the hmt cell's passes "
                         "mix leaves); build without kv_store")
    if cfg.leaf_mode == "hmt":
        out = _encode_leaves_hmt(graphdef, bparams, params["hmt"], jnp.asarray(tokens),
                                 jnp.asarray(lengths), hmt_cfg=cfg.hmt)
        return np.asarray(out)
    # Leaves go longest first into batches whose sizes come from `leaf_batch_sizes` (powers of
    # two, little padding: 17 leaves run as 16 + 1, not as 32), each batch padded to the bucket
    # of its longest leaf; the compiled programs are shared by every document.
    if n == 0:
        empty = np.zeros((0,) + tuple(params["leaf_write"].shape), np.float32)
        return (empty, LeafPassKV([], [], [], [])) if with_kv else empty
    order = np.argsort(-np.asarray(lengths), kind="stable")
    outs, i = [], 0
    kv = LeafPassKV([None] * n, [None] * n, [None] * n, [None] * n)
    sizes = leaf_batch_sizes(n, cfg.leaf_batch)
    for lb in tqdm(sizes, desc="leaf memories", disable=not progress, leave=False):
        sel = order[i:i + lb]
        i += len(sel)
        ln = lengths[sel]
        width = min(tokens.shape[1], bucket(max(int(ln.max()), 1)))
        t = tokens[sel, :width]
        pad = lb - len(t)
        if pad:
            t = np.concatenate([t, np.zeros((pad, width), t.dtype)])
            ln = np.concatenate([ln, np.zeros((pad,), ln.dtype)])
        if with_kv:
            res, keys, values, lk, lv = _encode_leaves_kv(
                graphdef, bparams, params, jnp.asarray(t), jnp.asarray(ln), pool=cfg.mem_pool,
                layer=cfg.mem_layer)
            keys, values = np.asarray(keys), np.asarray(values)
            lk, lv = np.asarray(lk), np.asarray(lv)
            if kv_params is not None or len(kv_prefix):
                lk, lv = _leaf_token_kv(graphdef, bparams if kv_params is None else kv_params,
                                        jnp.asarray(t), jnp.asarray(kv_prefix, jnp.int32))
                lk, lv = np.asarray(lk), np.asarray(lv)
            for r, j in enumerate(sel):
                a = int(lengths[j])
                kv.leaf_k[j], kv.leaf_v[j] = lk[:, r, :a], lv[:, r, :a]
                kv.write_k[j], kv.write_v[j] = keys[:, r], values[:, r]
        else:
            res = _encode_leaves(graphdef, bparams, params, jnp.asarray(t), jnp.asarray(ln),
                                 pool=cfg.mem_pool, layer=cfg.mem_layer)
        outs.append(np.asarray(res)[:lb - pad])
    out = np.empty((n,) + outs[0].shape[1:], np.float32)
    out[order] = np.concatenate(outs, axis=0)
    return (out, kv) if with_kv else out


def leaf_batch_sizes(n: int, max_batch: int) -> list[int]:
    """Batch sizes (powers of two up to `max_batch`) that cover `n` leaves: full batches, then
    the remainder rounded up to a power of two when that wastes at most a quarter of it, else
    split (17 -> [16, 1], 31 -> [32], 23 -> [16, 8]). At most log2(max_batch) + 1 small calls."""
    if n <= 0:
        return []
    top = 1 << (max(1, max_batch).bit_length() - 1)  # largest power of two <= max_batch
    pows = tuple(1 << i for i in range(top.bit_length()))
    sizes = [top] * (n // top)
    r = n % top
    while r:
        b = bucket(r, pows)
        if b - r <= r / 4:
            sizes.append(b)
            break
        low = b // 2
        sizes.append(low)
        r -= low
    return sizes


def aggregate(model, params: H2MTParams, kind: str, child_mem: Float[Array, "w c m d"],
              mask: Bool[Array, "w c"], layer: int = -1) -> Float[Array, "w m d"]:
    """A parent's memory from its (masked) children's memories (`layer`: for the "backbone"
    aggregator, the states its write tokens are read from, as for leaves)."""
    w, c, m, d = child_mem.shape
    if kind == "mean":
        wgt = mask.astype(jnp.float32)[..., None, None]
        return (child_mem * wgt).sum(1) / jnp.maximum(wgt.sum(1), 1.0)
    flat = child_mem.reshape(w, c * m, d)
    flat_mask = jnp.repeat(mask, m, axis=1)
    if kind == "attention":
        q = params["agg_query"]  # [m, d]
        scores = jnp.einsum("md,wjd->wmj", q, flat) / np.sqrt(d)
        scores = jnp.where(flat_mask[:, None, :], scores, -jnp.inf)
        probs = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("wmj,wjd->wmd", jnp.nan_to_num(probs), flat)
    # backbone: valid children are packed first (they already are: children fill slots in order)
    n = mask.sum(1).astype(jnp.int32) * m
    return encode_with_write_tokens(model, flat.astype(model.dtype), n, params["agg_write"],
                                    layer)


def sweep_memories(model, params: H2MTParams, kind: str, tree: Tree,
                   mem: Float[Array, "n m d"], level_nodes: Int[Array, "h w"] | None = None,
                   layer: int = -1) -> Float[Array, "n m d"]:
    """Fills internal nodes' memories height by height (`level_nodes[h]`: the nodes of height
    h+1 to compute; -1 entries are skipped). Leaf rows of `mem` must already be set. `layer`:
    `H2MTConfig.mem_layer`."""
    level_nodes = tree.level_nodes if level_nodes is None else level_nodes
    n_nodes = mem.shape[0]

    def step(mem, idx):
        valid = idx >= 0
        safe = jnp.where(valid, idx, 0)
        ch = tree.children[safe]  # [w, c]
        cmask = tree.child_mask[safe] & valid[:, None]
        new = aggregate(model, params, kind, mem[jnp.maximum(ch, 0)], cmask, layer)
        target = jnp.where(valid, idx, n_nodes)  # out of range: dropped
        return mem.at[target].set(new.astype(mem.dtype), mode="drop"), None

    mem, _ = jax.lax.scan(step, mem, level_nodes)
    return mem


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "layer"))
def _sweep_level(graphdef, bparams, params, tree: Tree, mem, idx, kind: str, layer: int = -1):
    """`sweep_memories` over one batch of same-height nodes `idx` `[w]` (-1: skipped)."""
    return sweep_memories(nnx.merge(graphdef, encoder_params(bparams, params)), params, kind,
                          tree, mem, idx[None], layer)


def sweep(graphdef, bparams, params, tree: Tree, mem: Float[Array, "n m d"],
          level_nodes: Int[Array, "h w"], kind: str, max_batch: int = 32, layer: int = -1
          ) -> Float[Array, "n m d"]:
    """`sweep_memories` with the backbone with the encoder adapters (`encoder_params`), height
    by height, each height's nodes (`level_nodes[h]`, -1 skipped) in jitted batches of
    `leaf_batch_sizes(count, max_batch)` nodes. A tree's upper levels hold few nodes: one scan at
    the widest level's padded width ran the aggregator over every padding slot of every height
    (a HotpotQA record's 36 leaves: 48 parent slots for 12 parents, each parent a backbone pass
    over `fanout * m` child memories). The compiled calls are shared by every batch of the same
    size."""
    levels = np.asarray(level_nodes)
    for row in levels:
        todo = row[row >= 0]
        for size in leaf_batch_sizes(len(todo), max_batch):
            idx = np.full((size,), -1, np.int32)
            idx[:min(size, len(todo))] = todo[:size]
            todo = todo[size:]
            mem = _sweep_level(graphdef, bparams, params, tree, mem, jnp.asarray(idx), kind=kind,
                               layer=layer)
    return mem
