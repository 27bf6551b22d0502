"""The H²MT question-answering loss (docs/algorithms.md, training): pure functions of padded
example arrays, for `jax.jit` / `jax.grad` / `jax.vmap`.

Loss = answer cross-entropy through the selected memories + `λ` × routing cross-entropy.
- Routing: at every depth, a softmax over that depth's nodes against the uniform distribution
  over its gold nodes (gold leaves and their ancestors): the beam compares nodes depth by depth.
- Answer: the `k` best leaves by routing score, gold leaves forced in (teacher forcing), fill
  the `k·m` memory slots of `prefix ‖ memories ‖ suffix ‖ answer`, in document order as at
  inference; the loss covers the answer tokens and the end-of-sequence token.
- `encode="cached"` trains on node memories computed once per document (no gradient into the
  leaf and aggregation passes; fast, the default on CPU); `encode="full"` recomputes leaves and
  the level sweep inside the loss (the leaf pass under `jax.checkpoint`), so gradients
  reach the write tokens and the aggregator too.

An example is a dict: `tree` (the fields of a padded `Tree`), `memories [N, m, d]`, `gold [N]`
(gold leaves and their ancestors, padded ids), `q_ids [Tq]`, `q_len []`, `seq_ids [T]`,
`mem_start []`, `labels [T]` (-1: no loss). `h2mt_jax.train.h2mt_qa` builds them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.memory import encode_with_write_tokens, read_memories, sweep_memories
from h2mt_jax.hierarchy.route import MASKED, query_embedding, score_nodes
from h2mt_jax.hierarchy.tree import Tree
from h2mt_jax.hmt.loss import token_nll

GOLD_BONUS = 1e4  # added to gold leaves' scores when choosing the answer's leaves (teacher forcing)


def route_loss(scores, tree: Tree, gold) -> jnp.ndarray:
    """Mean over depths with gold nodes of the cross-entropy against the gold nodes there."""
    total, count = 0.0, 0.0
    for d in range(1, tree.max_height + 2):
        at = (tree.depth == d) & tree.node_mask
        gold_here = gold & at
        n_gold = gold_here.sum()
        logp = jax.nn.log_softmax(jnp.where(at, scores, MASKED))
        ce = -jnp.sum(jnp.where(gold_here, logp, 0.0)) / jnp.maximum(n_gold, 1)
        has = (n_gold > 0).astype(jnp.float32)
        total, count = total + ce * has, count + has
    return total / jnp.maximum(count, 1.0)


def node_memories(model, params, tree: Tree, cfg: H2MTConfig):
    """Every node's memory with gradients (encode="full"): leaves, then the level sweep."""
    enc = jax.checkpoint(lambda t, n: encode_with_write_tokens(model, model.embed(t), n,
                                                               params["leaf_write"]))
    leaf = enc(tree.leaf_tokens, tree.leaf_lengths)
    mem = jnp.zeros((tree.num_nodes,) + leaf.shape[1:], leaf.dtype)
    mem = mem.at[:tree.num_leaf_slots].set(leaf)
    return sweep_memories(model, params, cfg.aggregator, tree, mem)


def example_loss(trainable: dict, backbone_params, graphdef, ex: dict, *, cfg: H2MTConfig,
                 route_weight: float, lora_scale: float, encode: str):
    """(loss, metrics) for one padded example."""
    params = trainable["h2mt"]
    tree = Tree(**ex["tree"])
    base = trainable.get("backbone", backbone_params)
    answer_model = nnx.merge(graphdef, merge_lora(base, trainable.get("lora"), lora_scale))
    if encode == "full":
        mem = node_memories(nnx.merge(graphdef, base), params, tree, cfg)
    else:
        mem = jax.lax.stop_gradient(ex["memories"])
    s = query_embedding(answer_model, params, ex["q_ids"][None], ex["q_len"][None])[0]
    scores = score_nodes(params, s, mem, tree.node_mask)
    route = route_loss(scores, tree, ex["gold"])
    leaf_slots = tree.num_leaf_slots
    leaf_ok = tree.node_mask[:leaf_slots] & (tree.leaf_lengths > 0)
    gold_leaf = ex["gold"][:leaf_slots]
    leaf_scores = jnp.where(leaf_ok, scores[:leaf_slots], -jnp.inf)
    _, sel = jax.lax.top_k(leaf_scores + GOLD_BONUS * gold_leaf, cfg.k)
    sel = jnp.sort(sel)  # document order, as at inference
    chosen = read_memories(params, mem[sel].reshape(-1, mem.shape[-1]))  # [k*m, d]
    emb = answer_model.embed(ex["seq_ids"][None])[0]
    emb = jax.lax.dynamic_update_slice(emb, chosen.astype(emb.dtype), (ex["mem_start"], 0))
    hidden = answer_model(emb[None])[0][0]
    nll, count = token_nll(answer_model.logits(hidden), ex["labels"])
    answer = nll / jnp.maximum(count, 1)
    top2 = jax.lax.top_k(leaf_scores, 2)[1]
    hits = jnp.sum(gold_leaf[top2].astype(jnp.float32))
    gold_n = jnp.maximum(jnp.sum(gold_leaf), 1)
    return answer + route_weight * route, {"answer_loss": answer, "route_loss": route,
                                           "recall_at_2": hits / gold_n}


def batch_loss(trainable, backbone_params, graphdef, batch, **kw):
    """Mean loss over a batch (`vmap` of `example_loss`) and mean metrics."""
    losses, metrics = jax.vmap(lambda ex: example_loss(trainable, backbone_params, graphdef, ex,
                                                       **kw))(batch)
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)
