"""Fitting the fused routing score's weights (`h2mt.fuse`, `w_bm25`, `w_dense`) on training
questions: the lexical and dense node scores have no gradient-trained part, so their combination
is fit by search, on documents kept apart from every evaluation.

A sample is one question over one document's leaves: its per-leaf BM25 and dense scores and its
gold leaves. `fit_fusion` ranks every sample's leaves under each candidate (fusion rule, weights)
exactly as `hierarchy.node_scores.fuse_scores` combines them, and keeps the candidate with the
best mean recall@k (ties: the earlier, simpler candidate). It ranks leaves flat; the beam over
the tree, which the router uses, is measured afterwards by `bench/routing_recall.py`.

    samples = [leaf_sample(index, q, gold, embedder, leaf_vectors) for ...]
    best, table = fit_fusion(samples, k=2)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from h2mt_jax.hierarchy.node_scores import RRF_K, bm25_scores

DENSE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclasses.dataclass(frozen=True)
class LeafSample:
    """One question's per-leaf scores `{kind: [n_leaves]}` and its gold leaf ids."""

    scores: dict
    gold: frozenset


def leaf_sample(doc, question: str, gold: list[int], embedder,
                leaf_vectors: np.ndarray) -> LeafSample:
    """The BM25 and dense scores of every leaf of `doc` (an `Index`, or anything with its `spec`
    and `text`) for `question`, as the router computes them: `node_scores.bm25_scores` (the
    document's BM25 statistics built once and kept on `doc`) and the cosine of `embedder`'s
    question vector with `leaf_vectors` `[n_leaves, d]`."""
    n = doc.spec.n_leaves
    if not n or not gold:
        raise ValueError("a sample needs leaves and at least one gold leaf")
    bm25 = bm25_scores(doc, question)[:n]
    dense = leaf_vectors @ embedder.embed([question])[0]
    return LeafSample({"bm25": np.asarray(bm25, np.float64), "dense": np.asarray(dense, np.float64)},
                      frozenset(int(g) for g in gold))


def _normalise(x: np.ndarray, how: str) -> np.ndarray:
    if how == "weighted":  # min-max, as node_scores._minmax
        lo, hi = x.min(), x.max()
        return (x - lo) / max(hi - lo, 1e-9)
    order = np.argsort(-x, kind="stable")  # reciprocal rank, as node_scores._rrf
    rank = np.empty(len(x), np.int64)
    rank[order] = np.arange(len(x))
    return 1.0 / (RRF_K + rank + 1.0)


def fused_ranking(sample: LeafSample, weights: dict, how: str) -> np.ndarray:
    """Leaf ids, best first, under the fused score `Σ w_kind · normalise(scores_kind)`."""
    total = sum(w * _normalise(sample.scores[kind], how) for kind, w in weights.items() if w)
    return np.argsort(-total, kind="stable")


def recall_at(sample: LeafSample, ranking: np.ndarray, k: int) -> float:
    return len(sample.gold & {int(i) for i in ranking[:k]}) / len(sample.gold)


def fit_fusion(samples: list[LeafSample], k: int = 2,
               dense_weights: tuple[float, ...] = DENSE_WEIGHTS) -> tuple[dict, list[dict]]:
    """The best fusion on `samples`: `({"fuse", "w_bm25", "w_dense", "recall"}, every
    candidate's row)`. BM25's weight is 1 (only the ratio matters) and the dense weight is
    searched over `dense_weights`; 0 is BM25 alone, and dense alone is a candidate too, so the
    fit never does worse on its training questions than either score alone."""
    if not samples:
        raise ValueError("fit_fusion needs at least one sample")
    rows = []
    candidates = [(1.0, wd) for wd in dense_weights] + [(0.0, 1.0)]  # the last: dense alone
    for how, (wb, wd) in itertools.product(("weighted", "rrf"), candidates):
        weights = {"bm25": wb, "dense": wd}
        r = float(np.mean([recall_at(s, fused_ranking(s, weights, how), k) for s in samples]))
        rows.append({"fuse": how, "w_bm25": wb, "w_dense": wd, "recall": r})
    best = max(rows, key=lambda row: row["recall"])  # the first of equals
    return best, rows
