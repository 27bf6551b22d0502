"""Every evaluation method of eval.methods on a tiny random backbone with the real SmolLM2
tokenizer: sane predictions, BM25 retrieval, LongBench truncation, the compression budget,
per-document caching and the errors."""

from __future__ import annotations

import re

import pytest

from conftest import record_prompts, tiny_lm_with
from h2mt_jax.data import prompts
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.eval.methods import METHODS, STOPWORDS, Prediction, chunk_ids, make_method
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hmt import HMT, HMTConfig

TEMPLATE = prompts.SYNTHETIC_TEMPLATE
NEW = 4


@pytest.fixture(scope="module")
def tiny_lm(smollm2_tokenizer):  # the tokenizer alone: no 135M weights loaded
    lm = tiny_lm_with(smollm2_tokenizer, seed=0)
    assert lm.config.eos_token_ids == (smollm2_tokenizer.eos_token_id,)
    return lm


@pytest.fixture(scope="module")
def manual():
    return generate_manual(0, chapters=3)


@pytest.fixture(scope="module")
def h2mt(tiny_lm):
    return H2MT.create(tiny_lm, H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4,
                                                             title_tokens=8), k=3))


@pytest.fixture(scope="module")
def methods(tiny_lm, h2mt):
    hmt = HMT.create(tiny_lm, HMTConfig(segment_length=64, num_sensory=8, recall_dim=16))
    return {name: make_method(name, tiny_lm, h2mt=h2mt, hmt=hmt, k=3, chunk_tokens=64,
                              compress_budget=128, fmt="markdown") for name in METHODS}


@pytest.mark.parametrize("name", METHODS)
def test_every_method_gives_a_sane_prediction(methods, manual, name, monkeypatch):
    # Given a synthetic manual and one of its questions with gold spans
    q = manual.questions[0]
    m = methods[name]
    m.prepare("manual-0", manual.text)
    generate_ids = m.lm.generate_ids
    prompts_seen = record_prompts(monkeypatch, m.lm)  # whole prompts, cached opening included
    # When the method answers
    p = m.answer("manual-0", manual.text, q.question, TEMPLATE, NEW, gold_spans=q.gold_spans)
    # Then the prediction is complete and consistent
    assert isinstance(p, Prediction) and m.name == name
    assert isinstance(p.text, str) and p.text == p.text.strip()
    assert 0 < p.ttft_s <= p.total_s < 120
    assert 0 < p.prompt_tokens <= 2048 - NEW
    assert p.build_s >= 0
    if name in ("rag_bm25", "rag_dense", "h2mt", "h2mt_flat"):
        assert len(p.retrieved) == 3 and len(set(p.retrieved)) == 3
    if name in ("rag_bm25", "rag_dense") or name.startswith("h2mt") or name == "tree_text":
        assert p.build_s > 0
    if name == "h2mt_oracle":  # gold spans given: the gold leaves are read
        assert p.meta["route"] == "oracle" and p.retrieved
    if name == "tree_text":  # the routed leaves' text, whatever gold there is
        assert p.meta["route"] == "beam" and p.retrieved
    if name.startswith("h2mt") or name == "tree_text":
        assert {"query_s", "route_s", "prefill_s", "decode_s"} <= set(p.meta)
    if name == "hmt":  # reading the document is question-time work
        assert 0 < p.meta["read_s"] < p.ttft_s
    # And the answer is greedy decoding of the prompt the method says it built: the whole
    # document, or the retrieved chunks in document order, or the compressed tokens
    tok = m.lm.tokenizer
    if name in ("full", "rag_bm25", "rag_dense", "compress"):
        if name == "compress":
            pre, post = prompts.split_prompt(tok, TEMPLATE, q.question)
            ids = pre + tok(p.meta["context"], add_special_tokens=False)["input_ids"] + post
            assert p.prompt_tokens == len(pre) + p.meta["kept_tokens"] + len(post)
            assert tok.decode(prompts_seen[0][0]) == tok.decode(ids)
            # the kept tokens keep the order they have in the kept chunks
            kept = prompts_seen[0][0][len(pre):len(prompts_seen[0][0]) - len(post)]
            coarse = iter(t for i in sorted(p.retrieved)
                          for t in chunk_ids(tok, manual.text, 64)[i])
            assert len(kept) == p.meta["kept_tokens"] and all(t in coarse for t in kept)
        else:
            ctx = manual.text
            if name != "full":
                chunks = chunk_ids(tok, manual.text, 64)
                ctx = "\n\n".join(tok.decode(chunks[i]) for i in sorted(p.retrieved))
            ids = prompts.prompt_ids(tok, TEMPLATE, ctx, q.question, max_tokens=2048 - NEW)
            assert prompts_seen == [[ids]] and p.prompt_tokens == len(ids)
        gen = generate_ids(prompts_seen[0], max_new_tokens=NEW).tokens[0]
        assert p.text == tok.decode(gen, skip_special_tokens=True).strip()
    # and an H²MT method routes and reads as its name says
    expected = {"h2mt": ("beam", "memory"), "h2mt_flat": ("flat", "memory"),
                "h2mt_oracle": ("oracle", "memory"), "h2mt_memory_kv": ("beam", "memory_kv"),
                "h2mt_leaf_kv": ("beam", "leaf_kv"), "tree_text": ("beam", "text")}
    if name in expected:
        route, read = expected[name]
        index = m.index("manual-0")
        gold = index.leaves_for_spans([tuple(s) for s in q.gold_spans])
        a = m.h2mt.answer(index, q.question, template=TEMPLATE, max_new_tokens=NEW, k=3,
                          route=route, gold_leaves=gold if route == "oracle" else None,
                          answer_from=read)
        assert p.retrieved == list(a.leaves) and p.text == a.text
        assert p.prompt_tokens == a.prompt_tokens
        if route == "oracle":
            assert set(p.retrieved) == set(gold)


def test_bm25_retrieves_the_chunk_with_the_distinctive_word(tiny_lm, manual):
    # Given filler text with one sentence naming a word that nothing else contains
    paras = manual.text.split("\n\n")
    needle = ("Zorblaxian note: the zorblaxian resonator of the zorblaxian line is painted "
              "crimson.")
    context = "\n\n".join(paras[:len(paras) // 2] + [needle] + paras[len(paras) // 2:])
    m = make_method("rag_bm25", tiny_lm, k=1, chunk_tokens=32)
    # When asking about that word
    p = m.answer("needle", context, "What colour is the zorblaxian resonator painted?",
                 TEMPLATE, NEW)
    # Then BM25 ranks the chunk holding it first
    chunks = chunk_ids(tiny_lm.tokenizer, context, 32)
    assert len(chunks) > 20
    top = tiny_lm.tokenizer.decode(chunks[p.retrieved[0]])
    assert "zorblaxian" in top.lower()
    assert p.meta["chunks"] == len(chunks)


def test_rag_prompt_holds_the_retrieved_chunks_in_document_order(tiny_lm, manual, monkeypatch):
    # Given a document whose last paragraph alone names a word: BM25 ranks its chunk first
    needle = "Zorblaxian note: the zorblaxian resonator of the zorblaxian line is painted crimson."
    context = manual.text + "\n\n" + needle
    m = make_method("rag_bm25", tiny_lm, k=3, chunk_tokens=32)
    seen = record_prompts(monkeypatch, tiny_lm)
    q = "What colour is the zorblaxian resonator painted?"
    p = m.answer("needle", context, q, TEMPLATE, NEW)
    # Then the prompt holds the three chunks in the document's order (the best one last here)
    chunks = chunk_ids(tiny_lm.tokenizer, context, 32)
    assert "zorblaxian" in tiny_lm.tokenizer.decode(chunks[p.retrieved[0]]).lower()
    assert p.retrieved[0] >= len(chunks) - 2 and p.retrieved != sorted(p.retrieved)
    ctx = "\n\n".join(tiny_lm.tokenizer.decode(chunks[i]) for i in sorted(p.retrieved))
    assert seen == [[prompts.prompt_ids(tiny_lm.tokenizer, TEMPLATE, ctx, q,
                                        max_tokens=2048 - NEW)]]


def test_full_cuts_in_the_middle_past_the_window(tiny_lm, manual):
    q = manual.questions[1]
    cut = make_method("full", tiny_lm, window=200)
    p = cut.answer("m", manual.text, q.question, TEMPLATE, NEW)
    chat = len(prompts.prompt_ids(tiny_lm.tokenizer, TEMPLATE, "", q.question)) - len(
        tiny_lm.tokenizer(prompts.render(TEMPLATE, "", q.question),
                          add_special_tokens=False)["input_ids"])
    assert p.meta["truncated"] and p.prompt_tokens <= 200
    assert p.prompt_tokens >= 200 - chat - 8  # the cut uses the budget
    whole = make_method("full", tiny_lm).answer("m", manual.text, q.question, TEMPLATE, NEW)
    assert not whole.meta["truncated"] and whole.prompt_tokens > 1000


def test_compress_respects_the_budget_and_keeps_question_words(tiny_lm, manual):
    # Given a ~1.2k-token manual and a 96-token budget
    q = manual.questions[0]
    m = make_method("compress", tiny_lm, compress_budget=96, chunk_tokens=64)
    p = m.answer("m", manual.text, q.question, TEMPLATE, NEW)
    # Then the context is exactly the budget and the prompt is budget + template
    overhead = len(prompts.prompt_ids(tiny_lm.tokenizer, TEMPLATE, "", q.question))
    assert p.meta["kept_tokens"] == 96
    assert p.prompt_tokens <= 96 + overhead + 2
    # coarse stage: the best chunks up to twice the budget
    chunks = chunk_ids(tiny_lm.tokenizer, manual.text, 64)
    assert sum(len(chunks[i]) for i in p.retrieved) <= 2 * 96
    assert p.meta["coarse_tokens"] <= 2 * 96 and p.meta["context_tokens"] > 1000
    # fine stage: question words present in the kept chunks survive
    kept_text = "".join(tiny_lm.tokenizer.decode(chunks[i]) for i in sorted(p.retrieved))
    words = [w for w in re.findall(r"\w+", q.question) if w.lower() not in STOPWORDS]
    present = [w for w in words if re.search(rf" {w}\b", kept_text)]
    assert present and p.meta["forced_tokens"] > 0
    for w in present:
        assert w in p.meta["context"], (w, p.meta["context"])
    # a context within the budget is kept whole
    short = make_method("compress", tiny_lm, compress_budget=512)
    s = short.answer("s", "The pump is blue.", "What colour is the pump?", TEMPLATE, NEW)
    assert s.meta["context"] == "The pump is blue." and s.meta["coarse_s"] == 0.0


def test_prepare_is_cached_per_document(tiny_lm, h2mt, manual, monkeypatch):
    rag = make_method("rag_dense", tiny_lm, k=2)
    rag.prepare("d", manual.text)
    first = rag._cache["d"]
    rag.prepare("d", manual.text)
    assert rag._cache["d"] is first
    calls = []
    build = h2mt.build
    monkeypatch.setattr(h2mt, "build", lambda *a, **kw: calls.append(1) or build(*a, **kw))
    m = make_method("h2mt", tiny_lm, h2mt=h2mt, k=2)
    m.prepare("d", manual.text)
    m.prepare("d", manual.text)
    p = m.answer("d", manual.text, manual.questions[0].question, TEMPLATE, NEW)
    assert len(calls) == 1 and p.build_s == m._cache["d"][1] > 0
    m.answer("other", manual.text, manual.questions[1].question, TEMPLATE, NEW)
    assert len(calls) == 2  # a new document id is built on first use


def test_errors(tiny_lm, h2mt, manual):
    oracle = make_method("h2mt_oracle", tiny_lm, h2mt=h2mt)
    with pytest.raises(ValueError, match="h2mt_oracle"):
        oracle.answer("m", manual.text, manual.questions[0].question, TEMPLATE, NEW)
    with pytest.raises(ValueError, match="unknown method 'bm42'") as err:
        make_method("bm42", tiny_lm)
    assert all(name in str(err.value) for name in METHODS)
    with pytest.raises(ValueError, match="needs an HMT"):
        make_method("hmt", tiny_lm)
    with pytest.raises(ValueError, match="needs an H2MT"):
        make_method("tree_text", tiny_lm)


@pytest.mark.parametrize("budget", [120, 333, 1000])
def test_prompt_cut_fits_the_budget_chat_template_included(tiny_lm, manual, budget):
    tok = tiny_lm.tokenizer
    q = manual.questions[0].question
    ids = prompts.prompt_ids(tok, TEMPLATE, manual.text, q, max_tokens=budget)
    assert budget - 12 <= len(ids) <= budget
    text = tok.decode(ids)
    assert TEMPLATE.split("{")[0].strip()[:30] in text and q in text  # head and tail kept
    with pytest.raises(ValueError, match="cannot be cut"):
        prompts.prompt_ids(tok, TEMPLATE, manual.text, q, max_tokens=10)
