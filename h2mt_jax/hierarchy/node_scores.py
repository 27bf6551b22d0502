"""Routing scores beside the learned one (`h2mt.route_score`): lexical (BM25), dense (a pretrained
sentence embedder) and their fusion with the learned memory score.

- `bm25`: Okapi BM25 (`rank_bm25`) of the question against each leaf's text (its heading path
  included), over stemmed terms (`data.terms`), with the term statistics of the document's own
  leaves. An inner node scores the max
  over its children (`bm25_inner="max"`) or BM25 of its whole subtree's text against the
  corpus of all nodes' texts (`"subtree"`).
- `dense`: cosine between the question's and each node's all-MiniLM-L6-v2 embedding; a leaf
  embeds its text, an inner node is the normalised mean of its children's vectors
  (`Index.node_vectors`, computed at build time).
- `bm25_sent`, `dense_sent`: the same two scores per sentence (a leaf's sentences as
  `parse.split_sentences` cuts them, each with the leaf's heading path; BM25 statistics over the
  document's sentences), a leaf scoring its best sentence and an inner node the max over its
  children. A leaf holding all the asked words in one sentence outranks one holding them in
  different sentences, which matters most for the second hop's short bridge query
  (`bench/fit_fusion.py` measures it).
- `fused`: per question, each kind's scores are min-max normalised over the tree's nodes and
  summed with weights `w_bm25`, `w_dense`, `w_bm25_sent`, `w_dense_sent`, `w_memory` (the
  learned score as a residual), or
  combined by reciprocal-rank fusion `Σ_kind w_kind / (60 + rank_kind)` (`fuse="rrf"`).
Per-node arrays arrive padded like the tree, so the beam keeps its static shapes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from h2mt_jax.data.terms import terms
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.route import MASKED

RRF_K = 60.0


def leaf_texts(index) -> list[str]:
    """Each leaf's text with its heading path before it (what the leaf pass reads)."""
    out = []
    for i, (s, e) in enumerate(index.spec.leaf_spans):
        title = index.spec.titles[i]
        out.append(f"{title}\n{index.text[s:e]}" if title else index.text[s:e])
    return out


def leaf_sentences(index) -> tuple[list[str], np.ndarray]:
    """(texts, owner): every leaf's sentences in document order, each after its leaf's heading
    path, and the leaf id `[n_sentences]` each belongs to (a leaf without a sentence boundary is
    one sentence). Computed once per index and kept on it."""
    cache = index.__dict__.setdefault("_sentences", {})
    if "s" not in cache:
        spec, texts, owner = index.spec, [], []
        for i, (s, e) in enumerate(spec.leaf_spans):
            title = spec.titles[i]
            for a, b in parse.split_sentences(index.text, s, e) or [(s, e)]:
                texts.append(f"{title}\n{index.text[a:b]}" if title else index.text[a:b])
                owner.append(i)
        cache["s"] = (texts, np.asarray(owner, np.int64))
    return cache["s"]


def inner_max(spec, leaf_scores: np.ndarray) -> np.ndarray:
    """Every spec node's score `[n_nodes]`: the leaves' as given, an inner node the max over its
    children."""
    out = np.zeros(spec.n_nodes, np.float32)
    out[:spec.n_leaves] = leaf_scores
    for n in range(spec.n_leaves, spec.n_nodes):  # children have smaller ids
        out[n] = max(out[c] for c in spec.children[n])
    return out


def best_sentence(owner: np.ndarray, sentence_scores: np.ndarray, n_leaves: int) -> np.ndarray:
    """Each leaf's best sentence score `[n_leaves]` (`owner`: each sentence's leaf, in leaf
    order with every leaf present, as `leaf_sentences` makes it)."""
    starts = np.searchsorted(owner, np.arange(n_leaves))
    return np.maximum.reduceat(np.asarray(sentence_scores, np.float32), starts)


def bm25_model(index, inner: str):
    """The document's BM25 statistics (`rank_bm25.BM25Okapi`) over its leaves ("max") or all its
    nodes' texts ("subtree"): built once per index and kept on it, not once per question."""
    from rank_bm25 import BM25Okapi

    if inner not in ("max", "subtree", "sentence"):
        raise ValueError(f"bm25_inner must be max or subtree, got {inner!r}")
    cache = index.__dict__.setdefault("_bm25", {})
    if inner not in cache:
        spec = index.spec
        texts = leaf_sentences(index)[0] if inner == "sentence" else leaf_texts(index)
        if inner == "subtree":
            texts = texts + [" ".join(texts[i] for i in spec.leaves_under(n))
                             for n in range(spec.n_leaves, spec.n_nodes)]
        cache[inner] = BM25Okapi([terms(t) or ["_"] for t in texts])
    return cache[inner]


def bm25_scores(index, question: str, inner: str = "max") -> np.ndarray:
    """BM25 of `question` for every spec node `[n_nodes]` (see the module docstring)."""
    scores = np.asarray(bm25_model(index, inner).get_scores(terms(question)), np.float32)
    if inner == "subtree":
        return scores
    return inner_max(index.spec, scores)


def bm25_sentence_scores(index, question: str) -> np.ndarray:
    """`bm25_sent` for every spec node `[n_nodes]`: BM25 of `question` against each sentence
    (statistics over the document's sentences), a leaf's best sentence, inner nodes the max over
    their children."""
    scores = bm25_model(index, "sentence").get_scores(terms(question))
    return inner_max(index.spec, best_sentence(leaf_sentences(index)[1], scores,
                                               index.spec.n_leaves))


def dense_sentence_scores(index, sentence_vectors: np.ndarray, q: np.ndarray) -> np.ndarray:
    """`dense_sent` for every spec node `[n_nodes]`: cosine of the question vector `q` `[d]`
    with each sentence's unit vector `[n_sentences, d]`, a leaf's best sentence, inner nodes the
    max over their children."""
    return inner_max(index.spec, best_sentence(leaf_sentences(index)[1], sentence_vectors @ q,
                                               index.spec.n_leaves))


def node_vectors(spec, leaf_vectors: np.ndarray) -> np.ndarray:
    """Unit vectors of every spec node `[n_nodes, d]`: leaves as given, an inner node the
    normalised mean of its children's."""
    out = np.zeros((spec.n_nodes, leaf_vectors.shape[1]), np.float32)
    out[:spec.n_leaves] = leaf_vectors
    for n in range(spec.n_leaves, spec.n_nodes):
        v = out[spec.children[n]].mean(0)
        out[n] = v / max(float(np.linalg.norm(v)), 1e-12)
    return out


def _minmax(x, mask):
    lo = jnp.min(jnp.where(mask, x, jnp.inf))
    hi = jnp.max(jnp.where(mask, x, -jnp.inf))
    return jnp.where(mask, (x - lo) / jnp.maximum(hi - lo, 1e-9), 0.0)


def _rrf(x, mask):
    order = jnp.argsort(-jnp.where(mask, x, -jnp.inf))
    rank = jnp.empty_like(order).at[order].set(jnp.arange(x.shape[0]))
    return jnp.where(mask, 1.0 / (RRF_K + rank.astype(jnp.float32) + 1.0), 0.0)


def fuse_scores(kinds: dict, weights: dict, mask, how: str = "weighted"):
    """The fused node scores `[n]` from per-kind score arrays `{kind: [n]}` (padded; `mask`: the
    real nodes) and their weights; nodes outside `mask` get `MASKED`. A kind with weight 0 does
    not count, so one kind with all the weight ranks exactly as that kind alone."""
    norm = _minmax if how == "weighted" else _rrf
    total = jnp.zeros(mask.shape, jnp.float32)
    for kind, x in kinds.items():
        w = weights.get(kind, 0.0)
        if w:
            total = total + w * norm(x.astype(jnp.float32), mask)
    return jnp.where(mask, total, MASKED)
