"""Coarse-to-fine routing of a question through the tree, under `jit` with static shapes.

Query embedding `s = f([E(question) ‖ p])` at `p`'s position; node score
`(s W_q)·(mean_m mem(u) W_k) / sqrt(d_h)`. `beam_route` starts at the root's children and, for
a fixed number of steps (the padded height), keeps the top `k` candidates and replaces each kept
internal node by its children; kept leaves stay candidates. The frontier has `k + k·B` fixed
slots. `flat_route` ranks all leaves (the unpruned baseline).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from h2mt_jax.hierarchy.memory import encode_with_write_tokens
from h2mt_jax.hierarchy.tree import Tree
from h2mt_jax.typing import Array, Float, Int

NEG = -jnp.inf


def query_embedding(model, params, ids: Int[Array, "b t"], lengths: Int[Array, "b"]
                    ) -> Float[Array, "b d"]:
    """`f([E(question) ‖ p])` read at the summary prompt's position."""
    return encode_with_write_tokens(model, model.embed(ids), lengths, params["summary"])[:, 0]


def node_scores(params, s: Float[Array, "d"], mem: Float[Array, "n m d"]) -> Float[Array, "n"]:
    """Routing score of every node."""
    dh = params["w_q"].shape[1]
    q = s @ params["w_q"]
    keys = mem.astype(jnp.float32).mean(1) @ params["w_k"]
    return keys @ q / jnp.sqrt(jnp.float32(dh))


@flax.struct.dataclass
class Route:
    """Selected leaves `[k]` (-1: none) and their scores; `visited[step, k]`: the nodes kept at
    each step (the highlighted path); `scores[n]`: every node's score."""

    leaves: Int[Array, "k"]
    leaf_scores: Float[Array, "k"]
    visited: Int[Array, "h k"]
    scores: Float[Array, "n"]


def _top(frontier, scores, k):
    fs = jnp.where(frontier >= 0, scores[jnp.maximum(frontier, 0)], NEG)
    val, pos = jax.lax.top_k(fs, k)
    kept = jnp.where(jnp.isfinite(val), frontier[pos], -1)
    return kept, val


def beam_route(tree: Tree, scores: Float[Array, "n"], k: int) -> Route:
    """Top-k beam descent; returns the `k` best leaves reached."""
    b = tree.fanout
    lp = tree.num_leaf_slots
    width = k + k * b
    root_children = tree.children[tree.root]
    frontier = jnp.full((width,), -1, jnp.int32).at[:b].set(root_children)

    def step(frontier, _):
        kept, _ = _top(frontier, scores, k)
        is_leaf = (kept >= 0) & (kept < lp)
        expand = jnp.where((kept >= lp)[:, None], tree.children[jnp.maximum(kept, 0)], -1)
        return jnp.concatenate([jnp.where(is_leaf, kept, -1), expand.reshape(-1)]), kept

    frontier, visited = jax.lax.scan(step, frontier, None, length=tree.max_height)
    leaves, vals = _top(frontier, scores, k)
    return Route(leaves=leaves, leaf_scores=vals, visited=visited, scores=scores)


def flat_route(tree: Tree, scores: Float[Array, "n"], k: int) -> Route:
    """The `k` best leaves among all leaves."""
    lp = tree.num_leaf_slots
    leaf_ids = jnp.arange(lp, dtype=jnp.int32)
    leaf_ids = jnp.where(tree.leaf_lengths > 0, leaf_ids, -1)
    leaves, vals = _top(leaf_ids, scores, k)
    return Route(leaves=leaves, leaf_scores=vals, visited=leaves[None], scores=scores)


def route_question(model, params, tree: Tree, mem, q_ids, q_len, k: int, kind: str) -> Route:
    """Query encoding + scoring + beam or flat routing for one question."""
    s = query_embedding(model, params, q_ids[None], q_len[None])[0]
    scores = jnp.where(tree.node_mask, node_scores(params, s, mem), NEG)
    return (beam_route if kind == "beam" else flat_route)(tree, scores, k)
