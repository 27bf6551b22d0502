"""Fitting the fused routing score (`h2mt.fuse` and the weights of the text scores `bm25`,
`dense`, `bm25_sent`, `dense_sent`) on training questions: the text scores have no
gradient-trained part, so their combination is fit by search, on documents kept apart from
every evaluation.

A sample is one question over one document's leaves: its per-leaf score of every text kind, its
question vector and its gold leaves, with the document kept for the second hop. `fused_ranking`
ranks a sample's leaves exactly as `hierarchy.node_scores.fuse_scores` combines them;
`routed_leaves` adds the second hop as `H2MT.route` takes it (the first hop's `ceil(k/2)` best,
then the best leaves of the second hop's query, `hops.second_hop_query`). `fit_fusion` keeps
the candidate (fusion rule, weights) with the best mean recall@k (ties: the earlier, simpler
candidate). It ranks leaves flat; the beam over the tree, which the router uses, is measured
afterwards by `bench/routing_recall.py`.

    samples = [leaf_sample(doc, q, gold, embedder, leaf_vectors, sentence_vectors) for ...]
    best, table = fit_fusion(samples, k=2, hops=2)
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from h2mt_jax.hierarchy.config import TEXT_SCORES
from h2mt_jax.hierarchy.hops import pick_leaves, second_hop_query
from h2mt_jax.hierarchy.node_scores import (RRF_K, bm25_scores, bm25_sentence_scores,
                                           dense_sentence_scores)

DENSE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


@dataclasses.dataclass(frozen=True, eq=False)
class LeafSample:
    """One question's per-leaf scores `{kind: [n_leaves]}`, its gold leaf ids, and what the
    second hop needs: the question, its document and the document's dense vectors."""

    scores: dict
    gold: frozenset
    question: str = ""
    doc: object = None
    vectors: tuple = ()  # (leaf vectors [n_leaves, d], sentence vectors [n_sentences, d])
    embedder: object = None
    hop_scores: dict = dataclasses.field(default_factory=dict)  # second-hop query -> scores


def text_scores(doc, question: str, embedder, leaf_vectors, sentence_vectors) -> dict:
    """Every text kind's leaf scores `{kind: [n_leaves]}` for `question`, as the router
    computes them (`H2MT._extra_scores`)."""
    n = doc.spec.n_leaves
    q = embedder.embed([question])[0]
    return {"bm25": np.asarray(bm25_scores(doc, question)[:n], np.float64),
            "dense": np.asarray(leaf_vectors @ q, np.float64),
            "bm25_sent": np.asarray(bm25_sentence_scores(doc, question)[:n], np.float64),
            "dense_sent": np.asarray(dense_sentence_scores(doc, sentence_vectors, q)[:n],
                                     np.float64)}


def leaf_sample(doc, question: str, gold: list[int], embedder, leaf_vectors: np.ndarray,
                sentence_vectors: np.ndarray) -> LeafSample:
    """The text scores of every leaf of `doc` (an `Index`, or anything with its `spec` and
    `text`) for `question`: BM25 statistics built once and kept on `doc`; `leaf_vectors`
    `[n_leaves, d]` and `sentence_vectors` `[n_sentences, d]` (`node_scores.leaf_sentences`)
    the document's dense vectors."""
    if not doc.spec.n_leaves or not gold:
        raise ValueError("a sample needs leaves and at least one gold leaf")
    return LeafSample(text_scores(doc, question, embedder, leaf_vectors, sentence_vectors),
                      frozenset(int(g) for g in gold), question, doc,
                      (leaf_vectors, sentence_vectors), embedder)


def _normalise(x: np.ndarray, how: str) -> np.ndarray:
    if how == "weighted":  # min-max, as node_scores._minmax
        lo, hi = x.min(), x.max()
        return (x - lo) / max(hi - lo, 1e-9)
    order = np.argsort(-x, kind="stable")  # reciprocal rank, as node_scores._rrf
    rank = np.empty(len(x), np.int64)
    rank[order] = np.arange(len(x))
    return 1.0 / (RRF_K + rank + 1.0)


def fused_total(scores: dict, weights: dict, how: str) -> np.ndarray:
    """`Σ w_kind · normalise(scores_kind)` over leaves, as `node_scores.fuse_scores` sums it."""
    return sum(w * _normalise(np.asarray(scores[kind]), how) for kind, w in weights.items() if w)


def _ranking(scores: dict, weights: dict, how: str) -> np.ndarray:
    return np.argsort(-fused_total(scores, weights, how), kind="stable")


def fused_ranking(sample: LeafSample, weights: dict, how: str) -> np.ndarray:
    """Leaf ids, best first, under the fused score `Σ w_kind · normalise(scores_kind)`."""
    return _ranking(sample.scores, weights, how)


def routed_leaves(sample: LeafSample, weights: dict, how: str, k: int, hops: int = 1,
                  hop_query: str = "bridge", distinct_sections: bool = False) -> list[int]:
    """The `k` leaves the answer reads: the fused ranking's first `k` (hops=1), or the first
    hop's `ceil(k/2)` best then the second hop's best others (hops=2, the second hop's scores
    recomputed for `hops.second_hop_query`); with `distinct_sections`, after the best leaf
    those of sections not yet read first (`hops.pick_leaves`), as `H2MT.route` picks them."""
    first = [int(i) for i in fused_ranking(sample, weights, how)]
    sections = sample.doc.spec.titles if distinct_sections else None
    if len(first) <= k:
        return first[:k]
    if hops == 1:
        return pick_leaves(first[:1], first, k, sections)
    keep = first[:(k + 1) // 2]
    query = second_hop_query(sample.doc, keep[0], sample.question, hop_query)
    if query not in sample.hop_scores:  # candidates share second-hop queries: scored once
        sample.hop_scores[query] = text_scores(sample.doc, query, sample.embedder,
                                               *sample.vectors)
    scores = sample.hop_scores[query]
    return pick_leaves(keep, _ranking(scores, weights, how), k, sections)


def recall_at(sample: LeafSample, ranking, k: int) -> float:
    return len(sample.gold & {int(i) for i in list(ranking)[:k]}) / len(sample.gold)


def weight_grid(kinds=TEXT_SCORES) -> list[dict]:
    """Every on/off combination of the text kinds (weights 0 or 1), one kind alone first."""
    grid = [dict(zip(kinds, on)) for on in itertools.product((0.0, 1.0), repeat=len(kinds))
            if any(on)]
    return sorted(grid, key=lambda w: sum(v > 0 for v in w.values()))


def fit_fusion(samples: list[LeafSample], k: int = 2, hops: int = 1,
               candidates: list[dict] | None = None, fusions=("weighted", "rrf"),
               distinct_sections: bool = False) -> tuple[dict, list[dict]]:
    """The best fusion on `samples`: `({"fuse", "weights", "recall"}, every candidate's row)`,
    the answer's leaves picked as `routed_leaves` picks them.
    Candidates default to BM25 with each of `DENSE_WEIGHTS` for dense, and dense alone; pass
    `weight_grid()` to search the sentence kinds too. Each kind alone is a candidate, so the
    fit never does worse on its training questions than the best single score."""
    if not samples:
        raise ValueError("fit_fusion needs at least one sample")
    if candidates is None:
        candidates = [{"bm25": 1.0, "dense": wd} for wd in DENSE_WEIGHTS] + [{"dense": 1.0}]
    rows = []
    for how, weights in itertools.product(fusions, candidates):
        r = float(np.mean([recall_at(s, routed_leaves(s, weights, how, k, hops,
                                                      distinct_sections=distinct_sections), k)
                           for s in samples]))
        rows.append({"fuse": how, "weights": dict(weights), "recall": r})
    best = max(rows, key=lambda row: row["recall"])  # the first of equals
    return best, rows
