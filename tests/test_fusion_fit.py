"""Fitting the fused routing score's weights on training questions (train/fusion.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from h2mt_jax.hierarchy.node_scores import fuse_scores
from h2mt_jax.train.fusion import LeafSample, fit_fusion, fused_ranking, recall_at


@pytest.mark.parametrize("how", ["weighted", "rrf"])
def test_the_fit_ranks_leaves_exactly_as_the_router_fuses_them(rng, how):
    n = 17  # one shape: the router's function compiles once
    for _ in range(20):
        scores = {"bm25": rng.gamma(1.0, 2.0, n), "dense": rng.uniform(-0.2, 0.8, n)}
        weights = {"bm25": 1.0, "dense": float(rng.choice([0.0, 0.5, 1.5]))}
        ours = fused_ranking(LeafSample(scores, frozenset({0})), weights, how)
        router = np.asarray(fuse_scores({k: jnp.asarray(v) for k, v in scores.items()}, weights,
                                        jnp.ones(n, bool), how))
        np.testing.assert_array_equal(ours, np.argsort(-router, kind="stable"))


def test_the_fit_finds_the_score_that_carries_the_signal(rng):
    # Gold leaves are found by the dense score only when BM25 ties (no shared word): the fit
    # must give dense a positive weight and beat BM25 alone on these questions.
    samples = []
    for _ in range(40):
        n = 12
        gold = int(rng.integers(n))
        bm25 = rng.gamma(1.0, 1.0, n)
        bm25[gold] = bm25.max()  # BM25 ties the gold leaf with the best other leaf
        other = int(np.argmax(np.where(np.arange(n) == gold, -1, bm25)))
        bm25[other] = bm25[gold] + 1e-3  # ...and puts a wrong leaf first
        dense = rng.uniform(0.0, 0.3, n)
        dense[gold] = 0.9
        samples.append(LeafSample({"bm25": bm25, "dense": dense}, frozenset({gold})))
    best, rows = fit_fusion(samples, k=1)
    bm25_alone = next(r for r in rows if r["weights"] == {"bm25": 1.0, "dense": 0.0}
                      and r["fuse"] == "weighted")
    assert best["weights"]["dense"] > 0 and best["recall"] > bm25_alone["recall"]
    assert best["recall"] == max(r["recall"] for r in rows)
    assert recall_at(samples[0], np.arange(12), 12) == 1.0
    with pytest.raises(ValueError, match="at least one sample"):
        fit_fusion([])
