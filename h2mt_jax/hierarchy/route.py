"""Coarse-to-fine routing of a question through the tree, under `jit` with static shapes.

Query embedding `s = f([E(question) ‖ p])` at `p`'s position; node score
`(s W_q)·(mean_m mem(u) W_k) / sqrt(d_h)` (`score_nodes` masks padding with `MASKED`). `beam_route` starts at the root's children and, for
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
from h2mt_jax.typing import Array, Bool, Float, Int

MASKED = -1e30  # the score of padding and excluded nodes: finite, so softmaxes stay NaN-free


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


def score_nodes(params, s: Float[Array, "d"], mem: Float[Array, "n m d"],
                mask: Bool[Array, "n"]) -> Float[Array, "n"]:
    """`node_scores` with the nodes outside `mask` (padding) set to `MASKED`: the one place
    where node scores are masked (routing, training losses)."""
    return jnp.where(mask, node_scores(params, s, mem), MASKED)


@flax.struct.dataclass
class Route:
    """Selected leaves `[k]` (-1: none) and their scores; `visited[step, k]`: the nodes kept at
    each step (the highlighted path); `scores[n]`: every node's score."""

    leaves: Int[Array, "k"]
    leaf_scores: Float[Array, "k"]
    visited: Int[Array, "h k"]
    scores: Float[Array, "n"]


def _top(frontier, scores, k):
    fs = jnp.where(frontier >= 0, scores[jnp.maximum(frontier, 0)], MASKED)
    val, pos = jax.lax.top_k(fs, k)
    kept = jnp.where(val > MASKED / 2, frontier[pos], -1)
    return kept, jnp.where(kept >= 0, val, -jnp.inf)


def beam_route(tree: Tree, scores: Float[Array, "n"], k: int) -> Route:
    """Top-k beam descent; returns the `k` best leaves reached."""
    b = tree.fanout
    leaf_slots = tree.num_leaf_slots
    width = k + k * b
    root_children = tree.children[tree.root]
    frontier = jnp.full((width,), -1, jnp.int32).at[:b].set(root_children)

    def step(frontier, _):
        kept, _ = _top(frontier, scores, k)
        is_leaf = (kept >= 0) & (kept < leaf_slots)
        expand = jnp.where((kept >= leaf_slots)[:, None], tree.children[jnp.maximum(kept, 0)], -1)
        return jnp.concatenate([jnp.where(is_leaf, kept, -1), expand.reshape(-1)]), kept

    frontier, visited = jax.lax.scan(step, frontier, None, length=tree.max_height)
    leaves, vals = _top(frontier, scores, k)
    return Route(leaves=leaves, leaf_scores=vals, visited=visited, scores=scores)


def flat_route(tree: Tree, scores: Float[Array, "n"], k: int) -> Route:
    """The `k` best leaves among all leaves."""
    leaf_slots = tree.num_leaf_slots
    leaf_ids = jnp.arange(leaf_slots, dtype=jnp.int32)
    leaf_ids = jnp.where(tree.leaf_lengths > 0, leaf_ids, -1)
    leaves, vals = _top(leaf_ids, scores, k)
    return Route(leaves=leaves, leaf_scores=vals, visited=leaves[None], scores=scores)
