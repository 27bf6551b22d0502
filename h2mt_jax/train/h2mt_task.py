"""H²MT question-answering training (DESIGN.md §4.2.6): examples, loss, gradients.

Loss = answer cross-entropy through the selected memories + `λ` × routing cross-entropy.
- Routing: at every depth, a softmax over that depth's nodes against the uniform distribution
  over its gold nodes (gold leaves and their ancestors): the beam compares nodes depth by depth.
- Answer: the `k` best leaves by routing score, gold leaves forced in (teacher forcing), fill
  the `k·m` memory slots of `prefix ‖ memories ‖ suffix ‖ answer`, in document order as at
  inference; the loss covers the answer tokens and the end-of-sequence token.
- `encode="cached"` trains on node memories computed once per document (no gradient into the
  leaf and aggregation passes; fast, the default on CPU); `encode="full"` recomputes leaves and
  the level sweep inside the loss (`jax.checkpoint` per leaf batch and per level), so gradients
  reach the write tokens and the aggregator too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.data import prompts
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.index import Index
from h2mt_jax.hierarchy.memory import encode_with_write_tokens, read_memories, sweep_memories
from h2mt_jax.hierarchy.route import node_scores, query_embedding
from h2mt_jax.hierarchy.tree import padded_ids
from h2mt_jax.hmt.model import token_nll

GOLD_BONUS = 1e4


@dataclasses.dataclass(frozen=True)
class Shapes:
    """Padded sizes shared by every example of a dataset (one compiled step)."""

    nodes: int
    leaves: int
    height: int
    question: int
    sequence: int
    leaf_len: int
    fanout: int
    width: int


def example_arrays(index: Index, question: str, answer: str, gold_leaves: list[int],
                   tokenizer, template: str, cfg: H2MTConfig, eos_id: int) -> dict | None:
    """Unpadded numpy arrays of one training example (None when the document has fewer than
    `k` leaves or no gold leaf)."""
    spec, tree = index.spec, index.tree
    k, m = cfg.k, cfg.mem_tokens
    if spec.n_leaves < k or not gold_leaves:
        return None
    pid = padded_ids(spec, tree)
    parent = spec.parents()
    gold_nodes = set()
    for leaf in gold_leaves:
        n = leaf
        while n >= 0 and n != spec.root:
            gold_nodes.add(n)
            n = parent[n]
    gold = np.zeros(tree.num_nodes, bool)
    gold[pid[sorted(gold_nodes)]] = True
    q = tokenizer(question, add_special_tokens=False)["input_ids"]
    pre, post = prompts.split_prompt(tokenizer, template, question)
    ans = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"] + [eos_id]
    seq = pre + [0] * (k * m) + post + ans
    labels = np.full(len(seq), -1, np.int32)
    start = len(pre) + k * m + len(post)
    labels[start - 1:len(seq) - 1] = seq[start:]
    return {"memories": index.memories.astype(np.float32), "node_mask": np.asarray(tree.node_mask),
            "depth": np.asarray(tree.depth), "height": np.asarray(tree.height),
            "children": np.asarray(tree.children), "child_mask": np.asarray(tree.child_mask),
            "level_nodes": np.asarray(tree.level_nodes),
            "leaf_tokens": np.asarray(tree.leaf_tokens), "leaf_lengths": np.asarray(tree.leaf_lengths),
            "gold": gold, "q_ids": np.asarray(q, np.int32), "seq_ids": np.asarray(seq, np.int32),
            "mem_start": np.int32(len(pre)), "labels": labels}


def shapes_for(examples: list[dict], cfg: H2MTConfig) -> Shapes:
    """The smallest common padded sizes of a list of example arrays."""
    from h2mt_jax.generation.decode import bucket

    leaves = max(e["leaf_tokens"].shape[0] for e in examples)
    return Shapes(nodes=max(e["memories"].shape[0] for e in examples) - leaves + leaves,
                  leaves=leaves, height=max(e["level_nodes"].shape[0] for e in examples),
                  question=bucket(max(len(e["q_ids"]) for e in examples)),
                  sequence=bucket(max(len(e["seq_ids"]) for e in examples)),
                  leaf_len=cfg.build.leaf_len, fanout=cfg.build.fanout,
                  width=max(e["level_nodes"].shape[1] for e in examples))


def _pad(a: np.ndarray, shape, fill=0) -> np.ndarray:
    out = np.full(shape, fill, a.dtype)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def pad_example(e: dict, s: Shapes) -> dict:
    """Pads one example to `s`. Node ids move: leaves keep theirs, internal nodes shift by the
    difference in leaf slots (the tree layout puts internal nodes after the leaf slots)."""
    lp = e["leaf_tokens"].shape[0]
    shift = s.leaves - lp

    def nodes(a, fill=0):  # [N, ...] -> [s.nodes, ...] with the internal block shifted
        out = np.full((s.nodes,) + a.shape[1:], fill, a.dtype)
        out[:lp] = a[:lp]
        out[s.leaves:s.leaves + a.shape[0] - lp] = a[lp:]
        return out

    def ids(a):  # node ids inside arrays
        return np.where(a >= lp, a + shift, a)

    levels = np.full((s.height, s.width), -1, np.int32)
    lv = ids(e["level_nodes"])
    levels[:lv.shape[0], :lv.shape[1]] = lv
    return {"memories": nodes(e["memories"]), "node_mask": nodes(e["node_mask"], False),
            "depth": nodes(e["depth"], -1), "height": nodes(e["height"], -1),
            "children": ids(nodes(e["children"], -1)), "child_mask": nodes(e["child_mask"], False),
            "level_nodes": levels,
            "leaf_tokens": _pad(e["leaf_tokens"], (s.leaves, s.leaf_len)),
            "leaf_lengths": _pad(e["leaf_lengths"], (s.leaves,)),
            "gold": nodes(e["gold"], False), "q_ids": _pad(e["q_ids"], (s.question,)),
            "q_len": np.int32(len(e["q_ids"])), "seq_ids": _pad(e["seq_ids"], (s.sequence,)),
            "mem_start": e["mem_start"], "labels": _pad(e["labels"], (s.sequence,), -1)}


def _route_loss(scores, ex, max_height: int):
    """Mean over depths with gold nodes of the cross-entropy against the gold nodes there."""
    total, count = 0.0, 0.0
    for d in range(1, max_height + 1):
        at = (ex["depth"] == d) & ex["node_mask"]
        gold = ex["gold"] & at
        n_gold = gold.sum()
        logp = jax.nn.log_softmax(jnp.where(at, scores, -1e30))
        ce = -jnp.sum(jnp.where(gold, logp, 0.0)) / jnp.maximum(n_gold, 1)
        has = (n_gold > 0).astype(jnp.float32)
        total, count = total + ce * has, count + has
    return total / jnp.maximum(count, 1.0)


def _memories(model, params, ex, cfg: H2MTConfig):
    """Node memories with gradients (encode="full")."""
    lp = ex["leaf_tokens"].shape[0]
    enc = jax.checkpoint(lambda t, n: encode_with_write_tokens(model, model.embed(t), n,
                                                               params["leaf_write"]))
    leaf = enc(ex["leaf_tokens"], ex["leaf_lengths"])
    mem = jnp.zeros((ex["node_mask"].shape[0],) + leaf.shape[1:], leaf.dtype).at[:lp].set(leaf)
    tree = type("T", (), {"children": ex["children"], "child_mask": ex["child_mask"],
                          "level_nodes": ex["level_nodes"]})
    return sweep_memories(model, params, cfg.aggregator, tree, mem)


def example_loss(trainable: dict, backbone_params, graphdef, ex: dict, *, cfg: H2MTConfig,
                 route_weight: float, lora_scale: float, encode: str):
    """(loss, metrics) for one padded example."""
    params = trainable["h2mt"]
    base = trainable.get("backbone", backbone_params)
    answer_model = nnx.merge(graphdef, merge_lora(base, trainable.get("lora"), lora_scale))
    if encode == "full":
        mem = _memories(nnx.merge(graphdef, base), params, ex, cfg)
    else:
        mem = jax.lax.stop_gradient(ex["memories"])
    s = query_embedding(answer_model, params, ex["q_ids"][None], ex["q_len"][None])[0]
    scores = jnp.where(ex["node_mask"], node_scores(params, s, mem), -1e30)
    route = _route_loss(scores, ex, ex["level_nodes"].shape[0] + 1)
    lp = ex["leaf_tokens"].shape[0]
    leaf_ok = ex["node_mask"][:lp] & (ex["leaf_lengths"] > 0)
    leaf_scores = jnp.where(leaf_ok, scores[:lp] + GOLD_BONUS * ex["gold"][:lp], -jnp.inf)
    _, sel = jax.lax.top_k(leaf_scores, cfg.k)
    sel = jnp.sort(sel)  # document order, as at inference
    chosen = read_memories(params, mem[sel].reshape(-1, mem.shape[-1]))  # [k*m, d]
    emb = answer_model.embed(ex["seq_ids"][None])[0]
    emb = jax.lax.dynamic_update_slice(emb, chosen.astype(emb.dtype), (ex["mem_start"], 0))
    hidden = answer_model(emb[None])[0][0]
    nll, count = token_nll(answer_model.logits(hidden), ex["labels"])
    answer = nll / jnp.maximum(count, 1)
    hits = jnp.sum(jnp.where(ex["gold"][:lp], 1.0, 0.0)[jax.lax.top_k(
        jnp.where(leaf_ok, scores[:lp], -jnp.inf), 2)[1]])
    gold_n = jnp.maximum(jnp.sum(ex["gold"][:lp]), 1)
    return answer + route_weight * route, {"answer_loss": answer, "route_loss": route,
                                           "recall_at_2": hits / jnp.minimum(gold_n, 2)}


def batch_loss(trainable, backbone_params, graphdef, batch, **kw):
    """Mean loss over a batch (`vmap` of `example_loss`) and mean metrics."""
    losses, metrics = jax.vmap(lambda ex: example_loss(trainable, backbone_params, graphdef, ex,
                                                       **kw))(batch)
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)
