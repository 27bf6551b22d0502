"""The document tree: built on the host from an outline, stored as padded arrays for `jit`.

Node numbering (the one layout every jitted routine relies on):
- leaves are nodes `0 .. n_leaves-1` in document order, padded to `L_pad` slots;
- internal nodes follow at `L_pad .. L_pad + n_internal - 1`, by increasing height (so a parent
  always has a larger id than its children), the root last; padded to `N_pad` nodes in total.
Padding nodes have `height = -1`, no parent and no children; every array is padded to a bucket
size (`BUCKETS`), so documents of different sizes in one bucket share one compiled program.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from h2mt_jax.shapes import HEIGHT_BUCKETS, LEAF_BUCKETS, bucket
from h2mt_jax.typing import Array, Bool, Int



@dataclasses.dataclass
class TreeSpec:
    """An unpadded tree on the host (lists; node ids as in the module docstring, without
    padding: leaves `0..n_leaves-1`, internal nodes after them, root last)."""

    leaf_tokens: list[list[int]]
    leaf_spans: list[tuple[int, int]]  # character span of each leaf in the source text
    children: list[list[int]]  # per node; [] for leaves
    titles: list[str | None]  # per node (the section title it came from, if any)

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_tokens)

    @property
    def n_nodes(self) -> int:
        return len(self.children)

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    def parents(self) -> list[int]:
        parent = [-1] * self.n_nodes
        for p, cs in enumerate(self.children):
            for c in cs:
                parent[c] = p
        return parent

    def heights(self) -> list[int]:
        h = [0] * self.n_nodes
        for n in range(self.n_leaves, self.n_nodes):  # children have smaller ids
            h[n] = 1 + max(h[c] for c in self.children[n])
        return h

    def depths(self) -> list[int]:
        d = [0] * self.n_nodes
        for n in range(self.n_nodes - 1, -1, -1):
            for c in self.children[n]:
                d[c] = d[n] + 1
        return d

    def validate(self, fanout: int | None = None) -> None:
        """Checks the layout invariants; raises AssertionError naming the broken one."""
        parent = self.parents()
        assert self.n_leaves >= 1, "a tree needs at least one leaf"
        assert all(not self.children[i] for i in range(self.n_leaves)), "leaves have children"
        for n in range(self.n_leaves, self.n_nodes):
            assert self.children[n], f"internal node {n} has no children"
            assert all(c < n for c in self.children[n]), f"node {n} has a child with a larger id"
            if fanout is not None:
                assert len(self.children[n]) <= fanout, f"node {n} exceeds fan-out {fanout}"
        assert parent[self.root] == -1 and all(p >= 0 for p in parent[:-1]), "not one rooted tree"
        leaves = [i for i in self.leaves_under(self.root)]
        assert leaves == list(range(self.n_leaves)), "leaves are not in document order"

    def ancestors(self, node: int, parent: list[int] | None = None) -> list[int]:
        """The node's ancestors below the root, nearest first."""
        parent = self.parents() if parent is None else parent
        out, p = [], parent[node]
        while p >= 0 and p != self.root:
            out.append(p)
            p = parent[p]
        return out

    def leaves_under(self, node: int) -> list[int]:
        if node < self.n_leaves:
            return [node]
        return [leaf for c in self.children[node] for leaf in self.leaves_under(c)]


@flax.struct.dataclass
class Tree:
    """Padded tree arrays (a pytree; pass it to jitted functions).

    leaf_tokens `[L_pad, T]` int32, leaf_lengths `[L_pad]` (0 for padding leaves),
    parent `[N]` (-1: root or padding), children `[N, B]` (-1: none) with child_mask,
    height and depth `[N]` (-1: padding), node_mask `[N]`, level_nodes `[H, W]`: the internal
    nodes of height h+1 (-1: none), root `[]`.
    """

    leaf_tokens: Int[Array, "lp t"]
    leaf_lengths: Int[Array, "lp"]
    parent: Int[Array, "n"]
    children: Int[Array, "n c"]
    child_mask: Bool[Array, "n c"]
    height: Int[Array, "n"]
    depth: Int[Array, "n"]
    node_mask: Bool[Array, "n"]
    level_nodes: Int[Array, "h w"]
    root: Int[Array, ""]

    @property
    def num_leaf_slots(self) -> int:
        return self.leaf_tokens.shape[0]

    @property
    def num_nodes(self) -> int:
        return self.parent.shape[0]

    @property
    def fanout(self) -> int:
        return self.children.shape[1]

    @property
    def max_height(self) -> int:
        return self.level_nodes.shape[0]


def pad_tree(spec: TreeSpec, fanout: int, leaf_len: int, *, min_leaves: int = 0,
             min_nodes: int = 0, min_height: int = 0, min_width: int = 0) -> Tree:
    """Pads a `TreeSpec` to bucketed array sizes (minimums force a larger bucket)."""
    n_leaves, n_nodes = spec.n_leaves, spec.n_nodes
    n_internal = n_nodes - n_leaves
    leaf_slots = bucket(max(n_leaves, min_leaves), LEAF_BUCKETS)
    n_slots = leaf_slots + bucket(max(n_internal, min_nodes - leaf_slots, 1), LEAF_BUCKETS)
    heights = spec.heights()
    hmax = max(heights)
    height_slots = bucket(max(hmax, min_height, 1), HEIGHT_BUCKETS)
    widths = [sum(1 for h in heights if h == k) for k in range(1, hmax + 1)] or [1]
    width_slots = bucket(max(max(widths), min_width), LEAF_BUCKETS)
    ids = _id_map(n_leaves, n_nodes, leaf_slots)  # spec id -> padded id

    tokens = np.zeros((leaf_slots, leaf_len), np.int32)
    lengths = np.zeros((leaf_slots,), np.int32)
    for i, t in enumerate(spec.leaf_tokens):
        if len(t) > leaf_len:
            raise ValueError(f"leaf {i} has {len(t)} tokens, more than leaf_len={leaf_len}")
        tokens[i, :len(t)] = t
        lengths[i] = len(t)
    parent = np.full((n_slots,), -1, np.int32)
    children = np.full((n_slots, fanout), -1, np.int32)
    height = np.full((n_slots,), -1, np.int32)
    depth = np.full((n_slots,), -1, np.int32)
    level_nodes = np.full((height_slots, width_slots), -1, np.int32)
    fill = [0] * (height_slots + 1)
    for s, p in enumerate(spec.parents()):
        parent[ids[s]] = -1 if p < 0 else ids[p]
    for s, (cs, h, d) in enumerate(zip(spec.children, heights, spec.depths())):
        n = ids[s]
        if len(cs) > fanout:
            raise ValueError(f"node {s} has {len(cs)} children, more than fanout={fanout}")
        children[n, :len(cs)] = [ids[c] for c in cs]
        height[n], depth[n] = h, d
        if h >= 1:
            level_nodes[h - 1, fill[h]] = n
            fill[h] += 1
    return Tree(leaf_tokens=jnp.asarray(tokens), leaf_lengths=jnp.asarray(lengths),
                parent=jnp.asarray(parent), children=jnp.asarray(children),
                child_mask=jnp.asarray(children >= 0), height=jnp.asarray(height),
                depth=jnp.asarray(depth), node_mask=jnp.asarray(height >= 0),
                level_nodes=jnp.asarray(level_nodes),
                root=jnp.asarray(ids[spec.root], jnp.int32))


def _id_map(n_leaves: int, n_nodes: int, leaf_slots: int) -> np.ndarray:
    return np.asarray([*range(n_leaves), *range(leaf_slots, leaf_slots + n_nodes - n_leaves)],
                      np.int32)


def padded_ids(spec: TreeSpec, tree: Tree) -> np.ndarray:
    """Map from spec node ids to padded node ids (leaves keep theirs; internal nodes move to
    after the `tree.num_leaf_slots` leaf slots). The one home of the mapping; `spec_id` inverts it."""
    return _id_map(spec.n_leaves, spec.n_nodes, tree.num_leaf_slots)


def spec_id(spec: TreeSpec, tree: Tree, padded: int) -> int:
    """The spec node id of a padded node id (the inverse of `padded_ids`; -1 for padding)."""
    leaf_slots = tree.num_leaf_slots
    if padded < 0:
        return -1
    if padded < leaf_slots:
        return padded if padded < spec.n_leaves else -1
    n = spec.n_leaves + padded - leaf_slots
    return n if n < spec.n_nodes else -1
