"""H²MT end to end on a tiny random backbone with the real SmolLM2 tokenizer."""

from __future__ import annotations

import dataclasses
import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_data, tiny_lm_with
from h2mt_jax.data import hotpotqa
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.memory import sweep
from h2mt_jax.hierarchy.render import render_html, render_png
from h2mt_jax.hierarchy.tree import padded_ids


@pytest.fixture(scope="module")
def tiny_lm(smollm2_tokenizer):  # the tokenizer alone: no 135M weights loaded
    lm = tiny_lm_with(smollm2_tokenizer, seed=1)
    assert lm.config.eos_token_ids == (smollm2_tokenizer.eos_token_id,)
    return lm


@pytest.fixture(scope="module")
def h2mt(tiny_lm):
    cfg = H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4, title_tokens=8), k=3,
                     route_score="memory", hops=1,  # the learned score: what this module tests
                     distinct_sections=False)
    return H2MT.create(tiny_lm, cfg)


@pytest.fixture(scope="module")
def manual():
    return generate_manual(3, chapters=3)


@pytest.fixture(scope="module")
def index(h2mt, manual):
    return h2mt.build(manual.text, fmt="markdown")


def test_build_gives_a_valid_bucketed_tree(index, manual, h2mt):
    spec = index.spec
    spec.validate(h2mt.config.build.fanout)
    assert spec.n_leaves > 8
    assert all(len(t) <= h2mt.config.build.leaf_len for t in spec.leaf_tokens)
    spans = spec.leaf_spans
    assert all(0 <= s < e <= len(manual.text) for s, e in spans)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    assert index.tree.num_leaf_slots >= spec.n_leaves
    assert index.memories.shape == (index.tree.num_nodes, 1, 32)
    assert np.isfinite(index.memories[padded_ids(spec, index.tree)]).all()
    # every fact sentence of the manual is inside some leaf
    for q in manual.questions:
        assert index.leaves_for_spans(q.gold_spans)


def test_answer_reports_route_and_timings(h2mt, index, manual):
    q = manual.questions[0]
    for route in ("beam", "flat"):
        a = h2mt.answer(index, q.question, route=route)
        assert len(a.leaves) == 3 and len(set(a.leaves)) == 3
        assert a.scores == sorted(a.scores, reverse=True)
        assert a.memory_tokens == 3
        assert {"query_s", "route_s", "prefill_s", "decode_s", "ttft_s", "total_s"} <= set(a.timings)
        assert a.timings["ttft_s"] < a.timings["total_s"]
    gold = index.leaves_for_spans(q.gold_spans)
    oracle = h2mt.answer(index, q.question, route="oracle", gold_leaves=gold)
    assert oracle.leaves == gold
    text = h2mt.answer(index, q.question, answer_from="text", gold_leaves=gold, route="oracle")
    assert text.memory_tokens == 0 and text.prompt_tokens > oracle.prompt_tokens


def test_answers_read_the_templates_opening_from_the_prefix_cache(h2mt, index, manual):
    # Given one question, answered with the template's opening cached and then run whole
    q = manual.questions[0]
    gold = index.leaves_for_spans(q.gold_spans)
    alm = h2mt.answer_lm
    got = {}
    for reuse in (True, False):
        alm.reuse_prefixes = reuse
        try:
            got[reuse] = {m: h2mt.answer(index, q.question, answer_from=m, route="oracle",
                                         gold_leaves=gold, max_new_tokens=8)
                          for m in ("memory", "text")}
        finally:
            alm.reuse_prefixes = True
    # Then every mode answers the same from the same number of prompt positions
    for m in ("memory", "text"):
        assert got[True][m].text == got[False][m].text
        assert got[True][m].prompt_tokens == got[False][m].prompt_tokens
    # and the opening was computed once for both modes (one template, one question)
    assert alm.prefix_cache.misses >= 1 and alm.prefix_cache.hits >= 1


def test_ancestors_are_fed_coarse_to_fine(tiny_lm, index, manual):
    h = H2MT.create(tiny_lm, H2MTConfig(build=index.build, k=2, ancestors=True))
    a = h.answer(index, manual.questions[1].question)
    nodes = h._selected_nodes(index, a.leaves)
    depth = index.spec.depths()
    assert nodes[-len(a.leaves):] == sorted(a.leaves)
    anc = nodes[:-len(a.leaves)]
    assert anc and [depth[n] for n in anc] == sorted(depth[n] for n in anc)
    assert a.memory_tokens == len(nodes)


def test_index_roundtrip_and_route_picture(h2mt, index, manual, tmp_path):
    h2mt.save_index(index, tmp_path / "idx")
    h2, again = H2MT.load_index(tmp_path / "idx", lm=h2mt.lm)
    np.testing.assert_array_equal(again.memories, index.memories)
    assert again.spec.children == index.spec.children
    q = manual.questions[2].question
    a, b = h2mt.answer(index, q), h2.answer(again, q)
    assert a.leaves == b.leaves and a.text == b.text
    page = render_html(again, b, q)
    assert "Selected leaves" in page and f"#{1}" in page
    render_png(again, b, q, str(tmp_path / "route.png"))
    assert (tmp_path / "route.png").stat().st_size > 1000


def test_route_picture_labels_do_not_overlap_and_text_is_literal(h2mt, index):
    import matplotlib.pyplot as plt

    from h2mt_jax.hierarchy.render import route_figure

    q = "Does $x$ cost 5$ or $$10?"  # matplotlib would parse $...$ as math
    a = h2mt.answer(index, q, route="oracle", gold_leaves=[3, 4, 5, 6], max_new_tokens=2)
    fig = route_figure(index, a, q)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("#") and " " in t.get_text()]
    assert len(labels) == 4
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(b1.overlaps(b2) for i, b1 in enumerate(boxes) for b2 in boxes[i + 1:])
    assert "$x$" in fig.axes[0].get_title(loc="left")
    plt.close(fig)


def test_sweep_by_height_in_small_batches_matches_one_scan_over_padded_levels(h2mt, index):
    # Given a built tree whose levels hold different numbers of parents (padded to one width)
    import functools

    import jax
    from flax import nnx

    from h2mt_jax.hierarchy.memory import encoder_params, sweep_memories

    tree = index.tree
    levels = np.asarray(tree.level_nodes)
    counts = (levels >= 0).sum(1)
    assert len(set(counts[counts > 0])) > 1 and counts.max() < levels.shape[1]
    pid = padded_ids(index.spec, tree)
    mem = np.zeros_like(index.memories)
    mem[pid[:index.spec.n_leaves]] = index.memories[pid[:index.spec.n_leaves]]
    lm = h2mt.lm
    # When the parents are computed level by level in batches of at most 2 (and at most 32)
    small = np.asarray(sweep(lm.graphdef, lm.params, h2mt.params, tree, jnp.asarray(mem),
                             tree.level_nodes, kind="backbone", max_batch=2))
    big = np.asarray(sweep(lm.graphdef, lm.params, h2mt.params, tree, jnp.asarray(mem),
                           tree.level_nodes, kind="backbone"))
    # Then every node's memory is what one scan over every padded level slot computes
    model = nnx.merge(lm.graphdef, encoder_params(lm.params, h2mt.params))
    scan = np.asarray(jax.jit(functools.partial(sweep_memories, model, h2mt.params,
                                                "backbone"))(tree, jnp.asarray(mem)))
    np.testing.assert_allclose(small[pid], scan[pid], atol=1e-4)
    np.testing.assert_allclose(big[pid], scan[pid], atol=1e-4)
    np.testing.assert_allclose(index.memories[pid], scan[pid], atol=1e-4)


def test_append_recomputes_only_the_new_spine(h2mt, index):
    more = generate_manual(9, chapters=1).text
    grown = h2mt.append(index, more)
    grown.spec.validate(h2mt.config.build.fanout)
    assert grown.text.endswith(more) and grown.spec.n_leaves > index.spec.n_leaves
    assert grown.leaf_texts[:index.spec.n_leaves] == index.leaf_texts
    # a full recomputation of every node on the grown tree gives the same memories
    pid = padded_ids(grown.spec, grown.tree)
    mem = np.zeros_like(grown.memories)
    mem[pid[:grown.spec.n_leaves]] = h2mt._leaf_memories(grown.spec.leaf_tokens)
    full = np.asarray(sweep(h2mt.lm.graphdef, h2mt.lm.params, h2mt.params, grown.tree,
                            jnp.asarray(mem), grown.tree.level_nodes, kind="backbone"))
    np.testing.assert_allclose(grown.memories[pid], full[pid], atol=1e-4)
    assert grown.timings["recomputed_nodes"] < grown.spec.n_nodes


@pytest.mark.parametrize("leaf_mode,aggregator", [("hmt", "mean"), ("independent", "attention")])
def test_other_modes_build_and_answer(tiny_lm, manual, leaf_mode, aggregator):
    cfg = H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4, title_tokens=8),
                     leaf_mode=leaf_mode, aggregator=aggregator, k=2)
    h = H2MT.create(tiny_lm, cfg)
    # (pooling queries 30x their initial scale: attention far from a uniform mean)
    h.params = {**h.params, "agg_query": h.params["agg_query"] * 30}
    idx = h.build(manual.text, fmt="markdown")
    spec = idx.spec
    mem = np.asarray(idx.memories[padded_ids(spec, idx.tree)], np.float64)  # spec order
    # Then every parent is its aggregator over its children, written out here
    for n in range(spec.n_leaves, spec.n_nodes):
        kids = mem[list(spec.children[n])]  # [c, m, d]
        c, m, d = kids.shape
        flat = kids.reshape(c * m, d)
        if aggregator == "mean":
            want = kids.mean(0)
        else:  # each query row: softmax(q . x / sqrt(d)) over all c * m child vectors
            s = np.asarray(h.params["agg_query"], np.float64) @ flat.T / np.sqrt(d)
            p = np.exp(s - s.max(1, keepdims=True))
            want = (p / p.sum(1, keepdims=True)) @ flat
        np.testing.assert_allclose(mem[n], want, atol=1e-5, err_msg=f"node {n}")
    # and the leaves are encoded as leaf_mode says: the index holds the encoder's leaf memories;
    # through the HMT cell a leaf's memory depends on the leaves before it, independently not
    leaves = spec.leaf_tokens[:5]
    np.testing.assert_allclose(mem[:5], h._leaf_memories(leaves), atol=1e-4)
    with_first, without = h._leaf_memories(leaves)[1:], h._leaf_memories(leaves[1:])
    assert np.allclose(with_first, without, atol=1e-5) == (leaf_mode == "independent")
    assert len(h.answer(idx, manual.questions[0].question).leaves) == 2


def test_hotpotqa_record_builds_with_gold(h2mt):
    path = shared_data("hotpotqa", "hotpot_dev_distractor_first100.json")
    rec = json.load(open(path))[0]
    text, outline = hotpotqa.parse_hotpotqa(rec)
    idx = h2mt.build(text, outline=outline)
    titles = {idx.spec.titles[i] for i in range(idx.spec.n_leaves)}
    assert set(rec["context"]["title"]) <= titles
    gold = idx.leaves_for_spans(hotpotqa.hotpotqa_supporting_spans(rec, text))
    assert {idx.spec.titles[i] for i in gold} == set(rec["supporting_facts"]["title"])


def test_bad_documents(h2mt):
    with pytest.raises(ValueError, match="empty document"):
        h2mt.build("   \n ")
    one = h2mt.build("Only one sentence here.")
    assert one.spec.n_leaves == 1 and one.spec.n_nodes == 2
    heads = h2mt.build("# Title\n\n## Part one\n\n## Part two\n\n### Detail\n")
    assert heads.leaf_texts == ["Part one", "Detail"]  # bare headings become leaves
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        bad = h2mt.build(b"Valid text. \xff\xfe broken bytes here. More text follows.")
    assert any("byte" in str(x.message).lower() or "utf" in str(x.message).lower() for x in w)
    assert "\ufffd" in bad.text
    with pytest.raises(ValueError, match="question is empty"):
        h2mt.answer(one, "")
    with pytest.raises(ValueError, match="gold_leaves"):
        h2mt.answer(one, "What?", route="oracle")


def test_long_document_streams_leaves_in_bounded_batches(h2mt, monkeypatch):
    # Given ~50k tokens of text (a paragraph repeated with a counter so leaves differ)
    from h2mt_jax.hierarchy import memory

    para = ("Section {i} describes the maintenance of unit {i}. The pump must be checked every "
            "{j} days by the operator on duty, who records the pressure in the log book. ") * 3
    text = "\n\n".join(para.format(i=i, j=i % 97) for i in range(520))
    calls = []
    encode = memory._encode_leaves
    monkeypatch.setattr(memory, "_encode_leaves", lambda g, b, p, tokens, lengths, **kw: (
        calls.append(tuple(tokens.shape)) or encode(g, b, p, tokens, lengths, **kw)))
    idx = h2mt.build(text, fmt="plain")
    # Then the encoder saw every leaf, in batches of at most `leaf_batch` rows no wider than a
    # leaf, so its activations are bounded whatever the document's length
    assert idx.timings["leaf_tokens"] > 45_000
    n, batch = idx.spec.n_leaves, h2mt.config.leaf_batch
    assert sum(b for b, _ in calls) >= n and sum(b for b, _ in calls) - n < batch
    assert max(b for b, _ in calls) <= batch and len(calls) >= n // batch
    assert max(w for _, w in calls) <= h2mt.config.build.leaf_len
    idx.spec.validate(h2mt.config.build.fanout)


@pytest.mark.parametrize("n", [1, 3, 7, 17, 23, 31, 33, 100])
def test_leaf_batch_sizes_cover_with_little_padding(n):
    from h2mt_jax.hierarchy.memory import leaf_batch_sizes

    sizes = leaf_batch_sizes(n, 32)
    assert all(s & (s - 1) == 0 and s <= 32 for s in sizes)  # powers of two, bounded
    assert sum(sizes) >= n and sum(sizes) - n <= (n % 32) / 4
    assert len(sizes) <= n // 32 + 6


def test_leaf_batching_does_not_change_memories(tiny_lm, h2mt, manual):
    """Longest-first batches of mixed sizes give each leaf the memory it gets alone."""
    from h2mt_jax.hierarchy.memory import leaf_memories

    idx = h2mt.build(manual.text, fmt="markdown")
    n = 7
    leaves = idx.spec.leaf_tokens[:n]
    t = np.zeros((n, h2mt.config.build.leaf_len), np.int32)
    lengths = np.array([len(x) for x in leaves], np.int32)
    lengths[2] = 5  # a short leaf among long ones
    for i, ids in enumerate(leaves):
        t[i, :lengths[i]] = ids[:lengths[i]]
    cfg = dataclasses.replace(h2mt.config, leaf_batch=4)
    batched = leaf_memories(tiny_lm.graphdef, tiny_lm.params, h2mt.params, cfg, t, lengths)
    alone = np.concatenate([leaf_memories(tiny_lm.graphdef, tiny_lm.params, h2mt.params, cfg,
                                          t[i:i + 1], lengths[i:i + 1]) for i in range(n)])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_title_position_puts_the_heading_path_before_or_after_the_text(tiny_lm, manual):
    from h2mt_jax.hierarchy.build import build_spec

    text = parse.clean_text(manual.text)
    outline = parse.parse_document(text, "markdown")
    tok = tiny_lm.tokenizer
    specs = {pos: build_spec(text, outline, tok, BuildConfig(leaf_tokens=48, title_tokens=8,
                                                             title_position=pos))
             for pos in ("prefix", "suffix")}
    assert specs["prefix"].leaf_spans == specs["suffix"].leaf_spans
    for pre, suf, span in zip(specs["prefix"].leaf_tokens, specs["suffix"].leaf_tokens,
                              specs["prefix"].leaf_spans):
        head, body = tok.decode(pre).split("\n", 1)  # prefix: "path\ntext"
        assert tok.decode(suf) == body + "\n" + head  # suffix: "text\npath"
        assert text[slice(*span)].startswith(body[:20])
        assert len(pre) <= 48 + 8 and len(suf) <= 48 + 8
    with pytest.raises(ValueError, match="title_position"):
        BuildConfig(title_position="middle")


def test_leaf_tokens_keep_the_space_between_sentences(tiny_lm):
    from h2mt_jax.hierarchy.build import build_spec

    text = "The pump runs at 3000 rpm. Casis Tavquin works in Danstad. It is blue."
    outline = parse.parse_document(text, "plain")
    spec = build_spec(text, outline, tiny_lm.tokenizer, BuildConfig(leaf_tokens=20,
                                                                    title_tokens=0))
    decoded = [tiny_lm.tokenizer.decode(ids) for ids in spec.leaf_tokens]
    assert decoded == [text[slice(*span)] for span in spec.leaf_spans]  # no "rpm.Casis"
    assert len(decoded) > 1 and not any(d.startswith(" ") for d in decoded)


def test_memories_from_an_inner_layer(tiny_lm, manual):
    """mem_layer = L: a leaf's memories are its pooled residual stream after L blocks at unit
    RMS (0: the input embeddings), the parents' the aggregator's write tokens at the same
    layer; the KV readings are unchanged; the read map is re-fitted to the new states."""
    cfg = H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4, title_tokens=8), k=2,
                     mem_tokens=4, mem_pool="mean", kv_store="float32")
    final = H2MT.create(tiny_lm, cfg)
    inner = final.with_mem_layer(0)
    assert inner.config.mem_layer == 0 and final.config.mem_layer == -1
    leaves = [tiny_lm.tokenizer("The pump runs at a steady speed of nine.",
                                add_special_tokens=False)["input_ids"]]
    emb = np.asarray(tiny_lm.params["embedding"].value, np.float64)[leaves[0]]
    unit = emb / np.sqrt((emb ** 2).mean(-1, keepdims=True) + 1e-6)  # memory.unit_rms
    n = len(leaves[0])
    want = np.stack([unit[j * n // 4:(j + 1) * n // 4].mean(0) for j in range(4)])
    np.testing.assert_allclose(inner._leaf_memories(leaves)[0], want, atol=1e-4)
    assert not np.allclose(final._leaf_memories(leaves)[0], want, atol=1e-2)
    # the read map brings the new states to the token-embedding norm, as `create` does
    read = np.asarray(inner.params["read"])
    np.testing.assert_allclose(read, np.eye(read.shape[0]) * read[0, 0], atol=1e-6)
    assert read[0, 0] == pytest.approx(inner._read_scale(), rel=1e-5)
    assert read[0, 0] != pytest.approx(float(final.params["read"][0, 0]), rel=1e-2)
    mid = final.with_mem_layer(tiny_lm.config.num_layers - 1)
    i_final, i_mid = final.build(manual.text, fmt="markdown"), mid.build(manual.text,
                                                                         fmt="markdown")
    parents = i_mid.memories[i_mid.padded_ids][i_mid.spec.n_leaves:]  # write positions' states
    np.testing.assert_allclose(np.linalg.norm(parents, axis=-1),
                               np.sqrt(parents.shape[-1]), rtol=5e-3)  # eps of unit_rms
    assert not np.allclose(i_final.memories, i_mid.memories, atol=1e-3)
    np.testing.assert_allclose(i_final.kv.gather_write([0])[0], i_mid.kv.gather_write([0])[0])
    q = manual.questions[0].question
    assert len(mid.answer(i_mid, q, answer_from="memory").leaves) == 2
    with pytest.raises(ValueError, match="mem_layer=5 but the backbone"):
        final.with_mem_layer(tiny_lm.config.num_layers + 3)
    for bad in (-2, True, 1.5):
        with pytest.raises(ValueError, match="mem_layer must be"):
            H2MTConfig(mem_layer=bad)
