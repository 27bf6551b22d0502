"""Fitting the learned hop gate (`h2mt.hop_gate_score = "learned"`): a logistic regression over
the question's sentence vector (all-MiniLM-L6-v2, the vector the dense scores already embed)
that predicts whether the question needs a second hop, fit on training questions labelled by
whether their evidence spans more than one leaf.

    gate = fit_hop_gate(vectors, needs_two)        # {"w": [d], "b": [1]}
    h2mt = H2MT(lm, config.replace(hop_gate=0.5, hop_gate_score="learned"), params, lora,
                scale, hop_gate=gate)

Full-batch gradient descent on the mean log-loss plus `l2`·|w|²/2, from zero: deterministic.
`bench/fit_fusion.py` fits it on the training split and reports how often it fires on held-out
documents.
"""

from __future__ import annotations

import numpy as np

from h2mt_jax.hierarchy.hops import check_gate


def fit_hop_gate(vectors: np.ndarray, needs_two: np.ndarray, l2: float = 1e-3,
                 steps: int = 2000, lr: float = 2.0) -> dict:
    """`{"w": [d], "b": [1]}` fit on question vectors `[n, d]` and labels `[n]` (1: the question
    needs a second hop). Both classes must be present."""
    x = np.asarray(vectors, np.float64)
    y = np.asarray(needs_two, np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or not len(y):
        raise ValueError(f"fit_hop_gate needs vectors [n, d] and n labels, got {x.shape} and "
                         f"{y.shape}")
    if not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
        raise ValueError("fit_hop_gate needs 0/1 labels of both kinds")
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w + b, -60.0, 60.0)))
        g = p - y
        w -= lr * (x.T @ g / len(y) + l2 * w)
        b -= lr * float(g.mean())
    return check_gate({"w": w, "b": np.asarray([b])})
