"""Contrastive training of the learned routing score across documents (train/contrastive.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from h2mt_jax.train.contrastive import (QuestionFeatures, _pad, contrastive_loss,
                                        fit_contrastive)


def test_the_loss_counts_own_candidates_and_other_documents_only(rng):
    d, dh = 6, 4
    proj = {"w_q": jnp.asarray(rng.standard_normal((d, dh))),
            "w_k": jnp.asarray(rng.standard_normal((d, dh)))}
    feats = [QuestionFeatures(rng.standard_normal(d).astype(np.float32),
                              rng.standard_normal((n, d)).astype(np.float32), g, doc)
             for n, g, doc in ((3, 1, "a"), (2, 2, "a"), (3, 1, "b"))]
    got = float(contrastive_loss(proj, *map(jnp.asarray, _pad(feats))))

    def score(f, keys):
        q = f.s @ np.asarray(proj["w_q"])
        return (keys @ np.asarray(proj["w_k"])) @ q / np.sqrt(dh)

    want = []
    for i, f in enumerate(feats):  # candidates: its own, and those of other documents
        pool = [f.keys] + [o.keys for o in feats if o.doc != f.doc]
        s = score(f, np.concatenate(pool))
        logp = s - np.log(np.exp(s - s.max()).sum()) - s.max()
        want.append(-logp[:f.n_gold].mean())
    assert got == pytest.approx(float(np.mean(want)), rel=1e-5)


def test_training_finds_the_gold_leaves_of_unseen_documents(rng):
    # Gold keys are a hidden linear map of the question's summary vector plus noise; the
    # hard negatives are random. Trained projections must rank gold first on new questions.
    d = 12
    hidden = rng.standard_normal((d, d))

    def make(n_docs):
        out = []
        for doc in range(n_docs):
            for _ in range(3):
                s = rng.standard_normal(d).astype(np.float32)
                gold = s @ hidden + 0.1 * rng.standard_normal(d)
                keys = np.concatenate([gold[None], rng.standard_normal((5, d))]).astype(np.float32)
                out.append(QuestionFeatures(s, keys, 1, f"doc{doc}"))
        return out

    params = {"w_q": jnp.asarray(0.1 * rng.standard_normal((d, 8)), jnp.float32),
              "w_k": jnp.asarray(0.1 * rng.standard_normal((d, 8)), jnp.float32),
              "other": jnp.zeros(3)}
    train, test = make(20), make(10)

    def top1(p):
        return np.mean([np.argmax((f.keys @ np.asarray(p["w_k"])) @ (f.s @ np.asarray(p["w_q"])))
                        == 0 for f in test])

    trained, curve = fit_contrastive(params, train, steps=200, batch=16, lr=1e-2)
    assert np.mean(curve[-10:]) < 0.5 * np.mean(curve[:10])
    assert top1(trained) > top1(params) + 0.3 and top1(trained) >= 0.9
    np.testing.assert_array_equal(trained["other"], params["other"])  # only w_q, w_k move
    again, _ = fit_contrastive(params, train, steps=200, batch=16, lr=1e-2)
    np.testing.assert_array_equal(np.asarray(again["w_q"]), np.asarray(trained["w_q"]))
    with pytest.raises(ValueError, match="at least two documents"):
        fit_contrastive(params, [f for f in train if f.doc == "doc0"])

