"""Outline (from `parse`) -> `TreeSpec`: leaves at sentence boundaries, fan-out by grouping.

1. Leaves: each section's text blocks are split into sentences and packed, in order, into leaves
   of at most `leaf_tokens` tokens (a longer sentence is cut at token boundaries). A section with
   neither text nor children (a bare heading) forms no leaf, unless the document is headings
   only (then each becomes a leaf of its title, so the document still gives a tree). Each leaf may carry its heading path before or after its
   text (`title_position`).
2. Structure: a section becomes an internal node over its leaves and sub-sections; chains of
   single children collapse.
3. Fan-out: a node with more than `fanout` children gets its consecutive children grouped into
   contiguous groups, cutting where adjacent children are least similar (cosine of TF-IDF
   weighted mean token embeddings), repeatedly until every node has at most `fanout` children.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from h2mt_jax.hierarchy.parse import Section, split_sentences
from h2mt_jax.hierarchy.tree import TreeSpec


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    leaf_tokens: int = 128  # tokens of text per leaf (the title prefix comes on top)
    fanout: int = 8  # B: children per node at most
    title_tokens: int = 16  # title budget per leaf; 0 disables titles in leaves
    # where a leaf carries its heading path: "prefix" (before its text) or "suffix" (after it,
    # next to the write tokens that read the leaf's memory)
    title_position: str = "prefix"

    def __post_init__(self):
        if self.title_position not in ("prefix", "suffix"):
            raise ValueError(f"title_position must be prefix or suffix, got "
                             f"{self.title_position!r}")
        if self.leaf_tokens < 4:
            raise ValueError(f"leaf_tokens must be >= 4, got {self.leaf_tokens}")
        if self.fanout < 2:
            raise ValueError(f"fanout must be >= 2, got {self.fanout}")

    @property
    def leaf_len(self) -> int:
        return self.leaf_tokens + self.title_tokens


@dataclasses.dataclass
class Node:
    """A tree node while building: a leaf `(tokens, span)` or children, and its title."""

    leaf: tuple[list[int], tuple[int, int]] | None = None  # (tokens, span) for leaves
    children: list["Node"] = dataclasses.field(default_factory=list)
    title: str | None = None


def _encode(tokenizer, text: str, offsets: bool = False):
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return (out["input_ids"], out["offset_mapping"]) if offsets else out["input_ids"]


def _pieces(text: str, span: tuple[int, int], tokenizer, limit: int, lead: str = ""):
    """(tokens, span) pieces of one sentence, cut at token boundaries when it exceeds `limit`.
    `lead` (the white space that separates it from the previous sentence of its leaf) is
    tokenized with the sentence, so "fact. Next" does not become "fact.Next"."""
    s, e = span
    ids, offs = _encode(tokenizer, lead + text[s:e], offsets=True)
    if len(ids) <= limit:
        return [(ids, span)]
    out = []
    for i in range(0, len(ids), limit):
        chunk = offs[i:i + limit]
        a = max(s + chunk[0][0] - len(lead), s)
        out.append((ids[i:i + limit], (a, max(a, s + chunk[-1][1] - len(lead)))))
    return out


def _leaves(text: str, spans, tokenizer, cfg: BuildConfig, title_ids: list[int], title):
    """Packs the sentences of text blocks into leaves of at most `leaf_tokens` tokens."""
    leaves: list[Node] = []
    cur: list[int] = []
    cur_span: list[int] | None = None

    def flush():
        nonlocal cur, cur_span
        if cur:
            ids = cur + title_ids if cfg.title_position == "suffix" else title_ids + cur
            leaves.append(Node(leaf=(ids, (cur_span[0], cur_span[1])), title=title))
        cur, cur_span = [], None

    for block in spans:
        for sent in split_sentences(text, block[0], block[1]):
            gap = text[cur_span[1]:sent[0]] if cur_span else ""
            lead = ("\n" if "\n" in gap else " ") if gap and not gap.strip() else ""
            pieces = _pieces(text, sent, tokenizer, cfg.leaf_tokens, lead)
            if lead and len(cur) + len(pieces[0][0]) > cfg.leaf_tokens:
                flush()  # the sentence starts a new leaf: no leading white space
                pieces = _pieces(text, sent, tokenizer, cfg.leaf_tokens)
            for ids, span in pieces:
                if cur and len(cur) + len(ids) > cfg.leaf_tokens:
                    flush()
                cur = cur + ids
                cur_span = [span[0], span[1]] if cur_span is None else [cur_span[0], span[1]]
        flush()  # leaves never straddle a paragraph boundary
    return leaves


def _from_section(sec: Section, text: str, tokenizer, cfg: BuildConfig, inherited: str | None,
                  cursor: list[int], bare: bool = False):
    """The subtree of a section (None when it holds no text); `cursor[0]` is the end of the
    last span used, so a bare heading's span is looked up after it. A bare heading (a section
    with neither text nor children) is a leaf of its title only with `bare` (a document of
    headings only); otherwise it is dropped, since a heading never forms a leaf alone."""
    title = sec.title or inherited
    # Leaves start with their heading path (parent / section), so a leaf under "Overview" still
    # names the chapter it belongs to.
    path = " / ".join(t.strip() for t in (inherited if sec.title else None, sec.title or None)
                      if t and t.strip())
    title_ids = []
    if cfg.title_tokens and (path or title):
        head = (path or title).strip()
        if cfg.title_position == "suffix":  # "\n" then the path's last tokens
            nl = _encode(tokenizer, "\n")
            title_ids = nl + _encode(tokenizer, head)[-max(cfg.title_tokens - len(nl), 1):]
        else:
            title_ids = _encode(tokenizer, head + "\n")[-cfg.title_tokens:]
    kids = _leaves(text, sec.spans, tokenizer, cfg, title_ids, title)
    if sec.spans:
        cursor[0] = max(cursor[0], sec.spans[-1][1])
    for c in sec.children:
        node = _from_section(c, text, tokenizer, cfg, title, cursor, bare)
        if node is not None:
            kids.append(node)
    if not kids and bare and sec.title and sec.title.strip():  # a leaf of its title
        head = sec.title.strip()
        ids = _encode(tokenizer, head)[:cfg.leaf_tokens]
        start = text.find(head, cursor[0])
        start = start if start >= 0 else cursor[0]
        cursor[0] = start + len(head)
        return Node(leaf=(ids, (start, start + len(head))), title=sec.title)
    if not kids:
        return None
    if len(kids) == 1:
        return kids[0]
    return Node(children=kids, title=sec.title)


def _vectors(leaf_tokens: list[list[int]], embedding: np.ndarray | None, dim: int = 256):
    """TF-IDF weighted mean token embeddings per leaf (hashed bag of ids without a table)."""
    n = len(leaf_tokens)
    df: dict[int, int] = {}
    for toks in leaf_tokens:
        for t in set(toks):
            df[t] = df.get(t, 0) + 1
    width = embedding.shape[1] if embedding is not None else dim
    out = np.zeros((n, width), np.float32)
    for i, toks in enumerate(leaf_tokens):
        if not toks:
            continue
        ids = np.asarray(toks)
        w = np.asarray([math.log((1 + n) / (1 + df[t])) + 1.0 for t in toks], np.float32)
        if embedding is not None:
            out[i] = (w[:, None] * embedding[ids]).sum(0) / w.sum()
        else:
            np.add.at(out[i], ids % dim, w)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-8)


def contiguous_groups(vectors: np.ndarray, fanout: int) -> list[tuple[int, int]]:
    """Splits `n > fanout` consecutive items into contiguous groups of 2..fanout items (a final
    group may hold fewer), cutting each group at its weakest link: the boundary whose two sides
    are least similar among the allowed cut points."""
    n = len(vectors)
    if n <= fanout:
        return [(0, n)]
    sim = np.einsum("id,id->i", vectors[:-1], vectors[1:])  # sim[i]: between i and i+1
    min_size = max(2, math.ceil(fanout / 2))
    groups, i = [], 0
    while n - i > fanout:
        lo, hi = i + min_size, min(i + fanout, n - 1)
        cut = lo + int(np.argmin(sim[lo - 1:hi]))  # group is [i, cut)
        groups.append((i, cut))
        i = cut
    groups.append((i, n))
    return groups


def _enforce_fanout(node: Node, leaf_vec, fanout: int) -> np.ndarray:
    """Groups children bottom-up; returns the node's vector (mean of its leaves' vectors)."""
    if node.leaf is not None:
        return leaf_vec[id(node)]
    vecs = np.stack([_enforce_fanout(c, leaf_vec, fanout) for c in node.children])
    while len(node.children) > fanout:
        groups = contiguous_groups(vecs, fanout)
        kids, new_vecs = [], []
        for a, b in groups:
            if b - a == 1:
                kids.append(node.children[a])
            else:
                kids.append(Node(children=node.children[a:b]))
            v = vecs[a:b].mean(0)
            new_vecs.append(v / max(np.linalg.norm(v), 1e-8))
        node.children, vecs = kids, np.stack(new_vecs)
    v = vecs.mean(0)
    return v / max(np.linalg.norm(v), 1e-8)


def build_spec(text: str, outline: Section, tokenizer, cfg: BuildConfig = BuildConfig(),
               embedding: np.ndarray | None = None) -> TreeSpec:
    """The tree of a parsed document. `embedding` (the backbone's `[V, d]` input embeddings)
    drives the similarity grouping; without it, hashed TF-IDF bags of token ids do."""
    root = _from_section(outline, text, tokenizer, cfg, None, [0])
    if root is None:  # headings only: they are all there is to read
        root = _from_section(outline, text, tokenizer, cfg, None, [0], bare=True)
    if root is None:
        raise ValueError("the document has no text to build leaves from")
    if root.leaf is not None:
        root = Node(children=[root])
    leaves: list[Node] = []

    def collect(n):
        if n.leaf is not None:
            leaves.append(n)
        for c in n.children:
            collect(c)

    collect(root)
    vecs = _vectors([n.leaf[0] for n in leaves], embedding)
    _enforce_fanout(root, {id(n): v for n, v in zip(leaves, vecs)}, cfg.fanout)
    return number_nodes(root, leaves)


def internal_in_order(root: Node) -> list[Node]:
    """Internal nodes by increasing height, post-order within a height, root last (the node
    numbering of `number_nodes`, shared by incremental appends)."""
    height: dict[int, int] = {}
    order: list[Node] = []

    def visit(n) -> int:
        if n.leaf is not None:
            return 0
        h = 1 + max(visit(c) for c in n.children)
        height[id(n)] = h
        order.append(n)
        return h

    visit(root)
    internal = sorted(order, key=lambda n: height[id(n)])  # stable: post-order within a height
    internal.remove(root)
    return internal + [root]


def number_nodes(root: Node, leaves: list[Node]) -> TreeSpec:
    """Leaves 0..n-1 in document order, internal nodes by increasing height, root last."""
    internal = internal_in_order(root)
    ids = {id(n): i for i, n in enumerate(leaves)}
    ids.update({id(n): len(leaves) + i for i, n in enumerate(internal)})
    children = [[] for _ in leaves] + [[ids[id(c)] for c in n.children] for n in internal]
    return TreeSpec(leaf_tokens=[n.leaf[0] for n in leaves],
                    leaf_spans=[n.leaf[1] for n in leaves], children=children,
                    titles=[n.title for n in leaves] + [n.title for n in internal])
