"""The offline index: a document's tree and node memories, built once, saved, loaded, extended.

    index = h2mt.build(text)                 # parse, build the tree, encode leaves, level sweep
    index.save("idx/"); index = Index.load("idx/")
    index = h2mt.append(index, more_text)    # recomputes only new leaves and their ancestors
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from h2mt_jax.hierarchy.build import BuildConfig, Node, internal_in_order, number_nodes
from h2mt_jax.hierarchy.leaf_kv import LeafKV
from h2mt_jax.hierarchy.tree import Tree, TreeSpec, pad_tree, padded_ids, spec_id
from h2mt_jax.io import atomic_write, read_meta, write_meta
from h2mt_jax.shapes import HEIGHT_BUCKETS, LEAF_BUCKETS, bucket

FORMAT = "h2mt_jax.index/1"


@dataclasses.dataclass
class Index:
    """A built document: source `text`, `spec` (host tree), `tree` (padded arrays), node
    `memories` `[N_pad, m, d]` (float32, host) and build timings."""

    text: str
    spec: TreeSpec
    tree: Tree
    memories: np.ndarray
    build: BuildConfig
    doc_id: str = ""
    timings: dict = dataclasses.field(default_factory=dict)
    kv: LeafKV | None = None  # per-leaf KV caches (built with kv_store), for memory_kv / leaf_kv
    node_vectors: np.ndarray | None = None  # [n_nodes, d] dense routing vectors (spec ids)
    sentence_vectors: np.ndarray | None = None  # [n_sentences, d]: node_scores.leaf_sentences

    @property
    def modes(self) -> tuple[str, ...]:
        """The answer modes (`H2MTConfig.answer_from`) this index can serve."""
        return ("memory", "text") + (("memory_kv", "leaf_kv") if self.kv is not None else ())

    @property
    def leaf_texts(self) -> list[str]:
        return [self.text[s:e] for s, e in self.spec.leaf_spans]

    def leaf_ids(self, padded: np.ndarray) -> list[int]:
        """Spec leaf ids of padded node ids (leaves keep their ids; -1 entries dropped)."""
        return [int(i) for i in padded if 0 <= i < self.spec.n_leaves]

    def spec_node(self, padded_id: int) -> int:
        """Spec node id of a padded node id (-1 for padding)."""
        return spec_id(self.spec, self.tree, padded_id)

    @property
    def padded_ids(self) -> np.ndarray:
        """Padded node id of every spec node (`tree.padded_ids`)."""
        return padded_ids(self.spec, self.tree)

    def node_memories(self, nodes: list[int]) -> np.ndarray:
        """Memories of spec nodes: `[len(nodes), m, d]`."""
        return self.memories[self.padded_ids[list(nodes)]]

    def leaves_for_spans(self, spans: list[tuple[int, int]]) -> list[int]:
        """Leaves whose character span overlaps any of `spans` (gold leaves from gold text)."""
        out = []
        for i, (s, e) in enumerate(self.spec.leaf_spans):
            if any(s < b and a < e for a, b in spans):
                out.append(i)
        return out

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Writes `memories.npy` and then `index.json` (text, tree lists, config), each
        atomically (the metadata last, so a reader never sees it before its memories)."""
        atomic_write(os.path.join(directory, "memories.npy"), lambda f: np.save(f, self.memories))
        if self.kv is not None:
            self.kv.save(directory)
        if self.node_vectors is not None:
            atomic_write(os.path.join(directory, "node_vectors.npy"),
                         lambda f: np.save(f, np.asarray(self.node_vectors, np.float32)))
        if self.sentence_vectors is not None:
            atomic_write(os.path.join(directory, "sentence_vectors.npy"),
                         lambda f: np.save(f, np.asarray(self.sentence_vectors, np.float32)))
        write_meta(os.path.join(directory, "index.json"), FORMAT, indent=None,
                   doc_id=self.doc_id, text=self.text, build=dataclasses.asdict(self.build),
                   timings=self.timings, leaf_tokens=self.spec.leaf_tokens,
                   leaf_spans=self.spec.leaf_spans, children=self.spec.children,
                   titles=self.spec.titles, kv=None if self.kv is None else self.kv.meta(),
                   node_vectors=self.node_vectors is not None,
                   sentence_vectors=self.sentence_vectors is not None,
                   padding={"leaves": self.tree.num_leaf_slots, "nodes": self.tree.num_nodes,
                            "height": self.tree.max_height,
                            "width": int(self.tree.level_nodes.shape[1])})

    @classmethod
    def load(cls, directory) -> "Index":
        """An index written by `save`. Every stored field is checked before anything is built
        from it (the tree's shape, spans inside the text, padding bounded by the tree's own
        sizes, array shapes); a bad one is a ValueError naming the field."""
        path = os.path.join(directory, "index.json")
        meta = read_meta(path, FORMAT, "an H2MT index")
        try:
            spec = TreeSpec(leaf_tokens=[[int(t) for t in ids] for ids in meta["leaf_tokens"]],
                            leaf_spans=[(int(a), int(b)) for a, b in meta["leaf_spans"]],
                            children=[[int(c) for c in cs] for cs in meta["children"]],
                            titles=list(meta["titles"]))
            build = BuildConfig(**meta["build"])
            text, pad = meta["text"], {k: int(v) for k, v in meta["padding"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed field ({type(e).__name__}: {e})") from e
        validate_stored_tree(spec, build, text, pad, path)
        tree = pad_tree(spec, build.fanout, build.leaf_len, min_leaves=pad["leaves"],
                        min_nodes=pad["nodes"], min_height=pad["height"], min_width=pad["width"])
        memories = np.load(os.path.join(directory, "memories.npy"), allow_pickle=False)
        if memories.shape[0] != tree.num_nodes:
            raise ValueError(f"memories.npy has {memories.shape[0]} rows, the tree {tree.num_nodes}")
        kv = None
        if meta.get("kv"):
            kv = LeafKV.load(directory, meta["kv"])
            if kv.n_leaves != spec.n_leaves or any(
                    int(n) != len(t) for n, t in zip(kv.lengths, spec.leaf_tokens)):
                raise ValueError(f"{directory}: the stored leaf KV caches do not match the "
                                 "tree's leaves (kv.lengths)")
        vectors = None
        if meta.get("node_vectors"):
            vectors = np.load(os.path.join(directory, "node_vectors.npy"), allow_pickle=False)
            if vectors.shape[0] != spec.n_nodes:
                raise ValueError(f"{directory}: node_vectors.npy has {vectors.shape[0]} rows, "
                                 f"the tree {spec.n_nodes} nodes")
        index = cls(text, spec, tree, memories, build, meta.get("doc_id", ""),
                    meta.get("timings", {}), kv, vectors)
        if meta.get("sentence_vectors"):
            from h2mt_jax.hierarchy.node_scores import leaf_sentences

            sv = np.load(os.path.join(directory, "sentence_vectors.npy"), allow_pickle=False)
            want = len(leaf_sentences(index)[0])
            if sv.ndim != 2 or sv.shape[0] != want:
                raise ValueError(f"{directory}: sentence_vectors.npy has shape {sv.shape}, the "
                                 f"leaves hold {want} sentences")
            index.sentence_vectors = sv
        return index


def validate_stored_tree(spec: TreeSpec, build: BuildConfig, text: str, pad: dict,
                         where: str) -> None:
    """Raises ValueError naming the first field of a stored tree that a saved index cannot have:
    children out of range or not below their parent (which also rules out cycles), a node with
    two parents or none, spans outside the text, leaves longer than `leaf_len`, padding beyond
    twice the bucket of the tree's own sizes (a crafted size would allocate without bound)."""
    n_leaves, n_nodes = spec.n_leaves, spec.n_nodes
    if n_leaves < 1 or len(spec.children) < n_leaves:
        raise ValueError(f"{where}: leaf_tokens/children: {n_leaves} leaves, {n_nodes} nodes")
    if len(spec.leaf_spans) != n_leaves or len(spec.titles) != n_nodes:
        raise ValueError(f"{where}: leaf_spans ({len(spec.leaf_spans)}) / titles "
                         f"({len(spec.titles)}) do not match {n_leaves} leaves, {n_nodes} nodes")
    for i, (a, b) in enumerate(spec.leaf_spans):
        if not 0 <= a < b <= len(text):
            raise ValueError(f"{where}: leaf_spans[{i}] = {(a, b)} is empty or outside the "
                             f"text of {len(text)} characters")
    for i, ids in enumerate(spec.leaf_tokens):
        if not 0 < len(ids) <= build.leaf_len:
            raise ValueError(f"{where}: leaf_tokens[{i}] has {len(ids)} tokens (1..{build.leaf_len})")
    parents = [0] * n_nodes
    for n, cs in enumerate(spec.children):
        if (n < n_leaves) != (not cs) or len(cs) > build.fanout:
            raise ValueError(f"{where}: children[{n}] = {cs[:8]}: leaves have none, inner nodes "
                             f"1..{build.fanout}")
        for c in cs:
            if not 0 <= c < n:
                raise ValueError(f"{where}: children[{n}] holds {c}: a child id must be in "
                                 f"[0, {n}) (below its parent)")
            parents[c] += 1
    if parents[-1] != 0 or any(p != 1 for p in parents[:-1]):
        raise ValueError(f"{where}: children: every node but the root (the last) needs exactly "
                         "one parent")
    heights = spec.heights()
    widths = [heights.count(h) for h in range(1, max(heights) + 1)] or [1]
    limits = {"leaves": bucket(n_leaves, LEAF_BUCKETS),
              "nodes": bucket(n_leaves, LEAF_BUCKETS) + bucket(max(n_nodes - n_leaves, 1),
                                                               LEAF_BUCKETS),
              "height": bucket(max(max(heights), 1), HEIGHT_BUCKETS),
              "width": bucket(max(widths), LEAF_BUCKETS)}
    for key, limit in limits.items():
        if key not in pad or not 0 <= pad[key] <= 2 * limit:
            raise ValueError(f"{where}: padding.{key} = {pad.get(key)} is beyond twice the tree's "
                             f"own bucket ({limit})")


def spec_to_nodes(spec: TreeSpec) -> tuple[Node, list[Node], dict[int, int]]:
    """Nested nodes of a spec, the leaves in order, and node object id -> spec id."""
    nodes = [Node(leaf=(spec.leaf_tokens[i], tuple(spec.leaf_spans[i])), title=spec.titles[i])
             for i in range(spec.n_leaves)]
    for n in range(spec.n_leaves, spec.n_nodes):
        nodes.append(Node(children=[nodes[c] for c in spec.children[n]], title=spec.titles[n]))
    return nodes[-1], nodes[:spec.n_leaves], {id(x): i for i, x in enumerate(nodes)}


def append_leaves(spec: TreeSpec, new_leaves: list[tuple[list[int], tuple[int, int]]],
                  fanout: int) -> tuple[TreeSpec, np.ndarray, list[int]]:
    """Appends leaves at the right edge, B-tree style: into the rightmost height-1 node while it
    has room, else into a new node hung on the right spine (a new root when the spine is full).

    Returns the new spec, `old_of_new[i]` (the old spec id of new node i, or -1 for new nodes)
    and the new ids of the nodes whose memory must be recomputed (new leaves and every node on
    their paths to the root).
    """
    root, leaves, old_id = spec_to_nodes(spec)
    dirty: set[int] = set()
    for tokens, span in new_leaves:
        leaf = Node(leaf=(tokens, span))
        leaves.append(leaf)
        path = [root]  # the right spine down to height 1
        while path[-1].children and path[-1].children[-1].leaf is None:
            path.append(path[-1].children[-1])
        carry = leaf
        for node in reversed(path):
            if len(node.children) < fanout:
                node.children.append(carry)
                carry = None
                break
            carry = Node(children=[carry])  # a new node one level up, same height as `node`
        if carry is not None:  # the whole spine is full: grow a new root
            root = Node(children=[root, carry])
        # the new leaf is the rightmost one: its ancestors are the right spine
        node = root
        while True:
            dirty.add(id(node))
            if node.leaf is not None:
                break
            node = node.children[-1]
    new = number_nodes(root, leaves)
    # map new ids back to old ones through the node objects
    order = leaves + internal_in_order(root)
    old_of_new = np.asarray([old_id.get(id(n), -1) for n in order], np.int32)
    dirty_ids = sorted(i for i, n in enumerate(order) if id(n) in dirty)
    return new, old_of_new, dirty_ids


def remap_memories(old: Index, new_spec: TreeSpec, new_tree: Tree, old_of_new: np.ndarray
                   ) -> np.ndarray:
    """The old memory rows moved to the new padded ids (zeros for new nodes)."""
    mem = np.zeros((new_tree.num_nodes,) + old.memories.shape[1:], np.float32)
    new_pad = padded_ids(new_spec, new_tree)
    old_pad = padded_ids(old.spec, old.tree)
    for new_id, old_id in enumerate(old_of_new):
        if old_id >= 0:
            mem[new_pad[new_id]] = old.memories[old_pad[old_id]]
    return mem
