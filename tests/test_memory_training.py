"""Trained compressed memories: the encoder adapters, the training-time readings against the
inference paths, memory pretraining (reconstruction falls), distillation targets from the
teacher's text pass, and bad input."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.memory_pretrain import get_config
from conftest import tiny_lm_with
from h2mt_jax.backbone.lora import merge_lora
from h2mt_jax.data import prompts
from h2mt_jax.errors import ConfigError
from h2mt_jax.generation.kv_prompt import unrope
from h2mt_jax.data.synthetic import generate_manual
from h2mt_jax.hierarchy import parse
from h2mt_jax.hierarchy.build import BuildConfig
from h2mt_jax.hierarchy.config import H2MTConfig
from h2mt_jax.hierarchy.h2mt import H2MT
from h2mt_jax.hierarchy.loss import _answer_hidden
from h2mt_jax.hierarchy.memory import encoder_params, leaf_pass, pool_weights
from h2mt_jax.hierarchy.memory_loss import encode_write, pretrain_loss
from h2mt_jax.train.h2mt_qa import teacher_targets
from h2mt_jax.train.memory_lm import CUES, PRE, MemoryLMTask, wikitext_articles
from test_leaf_kv import _segment_logits


@pytest.fixture(scope="module")
def lm(smollm2_tokenizer):
    return tiny_lm_with(smollm2_tokenizer, seed=3)


def _cfg(**kw):
    return H2MTConfig(build=BuildConfig(leaf_tokens=48, fanout=4, title_tokens=8),
                      recall_dim=16, k=2, **kw)


def _nudge(tree, key, scale=0.05):
    """Adapters with non-zero `b`, so that they change what they adapt."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def adapted(lm):
    """An H2MT with m=3 memories, encoder adapters and decoder adapters, all non-trivial."""
    from h2mt_jax.backbone.lora import init_lora

    h = H2MT.create(lm, _cfg(mem_tokens=3, enc_lora_rank=2, kv_store="float32"), seed=1)
    h.params = dict(h.params, enc_lora=_nudge(h.params["enc_lora"], jax.random.PRNGKey(5)))
    h.lora, h.lora_scale = _nudge(init_lora(lm.params, 2, jax.random.PRNGKey(6)),
                                  jax.random.PRNGKey(7)), 2.0
    return h


def test_encoder_adapters_change_memories_and_leave_leaf_kv_to_the_reader(lm, adapted):
    # Given the same document built with and without the encoder adapters
    text = generate_manual(4, chapters=1).text
    plain = H2MT(lm, adapted.config, {k: v for k, v in adapted.params.items() if k != "enc_lora"},
                 adapted.lora, adapted.lora_scale)
    a, b = adapted.build(text), plain.build(text)
    # Then the memories differ (the adapters encode), the leaves' own KV do not: both come from
    # the answer backbone (decoder adapters), as a text prompt would compute them
    assert not np.allclose(a.memories, b.memories, atol=1e-4)
    assert not np.allclose(a.kv.gather_write([0]), b.kv.gather_write([0]), atol=1e-4)
    np.testing.assert_allclose(a.kv.gather([0, 1])[0], b.kv.gather([0, 1])[0], atol=1e-5)


@pytest.mark.parametrize("pool,layer", [("write", -1), ("mean", -1), ("mean", 1)])
@pytest.mark.parametrize("mode", ["memory", "memory_kv"])
def test_training_reading_matches_the_inference_reading(lm, adapted, mode, pool, layer):
    # Given an index (memories from write tokens or mean-pooled runs, of the final states or
    # of an inner layer) and a question over two of its leaves
    adapted = adapted.with_config(mem_pool=pool).with_mem_layer(layer)
    index = adapted.build(generate_manual(2, chapters=1).text)
    leaves = [0, 2]
    tok = lm.tokenizer
    pre, post = prompts.split_prompt(tok, prompts.template_for("synthetic"), "Which pump?")
    alm = adapted.answer_lm
    # When the answer pass reads them at inference
    if mode == "memory_kv":
        k, v = index.kv.gather_write(leaves)
        want = _segment_logits(alm, pre, k, v, post)
    elif layer >= 1:  # one pass that puts the memories into the residual stream at `layer`
        from h2mt_jax.hierarchy.memory import memory_prompt

        mem = index.node_memories(leaves).reshape(-1, index.memories.shape[-1])
        emb = adapted.embedding
        x, inject = memory_prompt(adapted.params, layer, jnp.asarray(emb[pre])[None],
                                  jnp.asarray(mem)[None], jnp.asarray(emb[post])[None])
        assert inject[0] == layer and int(inject[1].sum()) == len(mem)
        model = alm.model
        want = np.asarray(model.logits(model(x, inject=inject)[0]))[0, -1]
    else:
        from h2mt_jax.hierarchy.memory import read_memories

        mem = np.asarray(read_memories(adapted.params, jnp.asarray(
            index.node_memories(leaves).reshape(-1, index.memories.shape[-1]))))
        emb = np.concatenate([adapted.embedding[pre], mem, adapted.embedding[post]])
        model = alm.model  # what generate_ids(embeds=...) prefills
        want = np.asarray(model.logits(model(jnp.asarray(emb[None]))[0]))[0, -1]
    # and as the training loss reads them (leaves re-encoded in the loss, as encode="full")
    m = adapted.config.mem_tokens
    enc = nnx.merge(lm.graphdef, encoder_params(lm.params, adapted.params))
    width = index.tree.leaf_tokens.shape[1]
    toks = np.zeros((2, width), np.int32)
    lens = np.zeros(2, np.int32)
    for r, i in enumerate(leaves):
        ids = index.spec.leaf_tokens[i]
        toks[r, :len(ids)], lens[r] = ids, len(ids)
    mem, keys, values = encode_write(enc, adapted.params, jnp.asarray(toks), jnp.asarray(lens),
                                     pool, layer)
    seq = np.asarray(pre + [0] * (2 * m) + post, np.int32)
    reader = nnx.merge(lm.graphdef, merge_lora(lm.params, adapted.lora, adapted.lora_scale))
    hidden = _answer_hidden(reader, adapted.params, mode, jnp.asarray(seq),
                            jnp.asarray(seq[:len(pre) + 3]), jnp.int32(len(pre)), 2 * m,
                            mem, keys, values, layer)
    got = np.asarray(reader.logits(hidden))[len(seq) - 1]
    # Then both give the same next-token logits
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_memory_answers_with_injected_memories_decode_as_full_passes(lm, adapted):
    # Given memories read at block 1 and a question over two leaves
    from h2mt_jax.hierarchy.memory import memory_prompt

    inner = adapted.with_config(mem_pool="mean").with_mem_layer(1)
    inner.params = dict(inner.params, inject=inner.params["inject"] * 3.0)  # far from R(mem)
    index = inner.build(generate_manual(2, chapters=1).text, kv_store="none")  # slots prefilled
    leaves = [0, 2]
    question = "Which pump?"
    pre, post = prompts.split_prompt(lm.tokenizer, prompts.template_for("synthetic"), question)
    mem = jnp.asarray(index.node_memories(leaves).reshape(-1, index.memories.shape[-1]))[None]
    alm = inner.answer_lm
    model = alm.model

    def greedy(n):  # n tokens, each by a full pass over the whole prompt so far
        out = []
        for _ in range(n):
            tail = jnp.asarray(inner.embedding[post + out])[None]
            x, inj = memory_prompt(inner.params, 1, jnp.asarray(inner.embedding[pre])[None],
                                   mem, tail)
            out.append(int(np.argmax(np.asarray(model.logits(model(x, inject=inj)[0]))[0, -1])))
        return out

    # When H2MT.answer generates from them, with the template's opening cached and without
    got = []
    for reuse in (True, False):
        alm.reuse_prefixes = reuse
        ans = inner.answer(index, question, route="oracle", gold_leaves=leaves,
                           answer_from="memory", max_new_tokens=4)
        got.append(lm.tokenizer(ans.text, add_special_tokens=False)["input_ids"])
    alm.reuse_prefixes = True
    # Then both decode what full passes with the memories injected at block 1 decode
    want = lm.tokenizer(lm.tokenizer.decode(greedy(4), skip_special_tokens=True).strip(),
                        add_special_tokens=False)["input_ids"]
    assert want and got[0] == got[1] == want
    # and the injection matters: without it (R(mem) at every block) the logits differ
    x, inj = memory_prompt(inner.params, 1, jnp.asarray(inner.embedding[pre])[None], mem,
                           jnp.asarray(inner.embedding[post])[None])
    assert not np.allclose(model(x, inject=inj)[0], model(x)[0], atol=1e-3)


def test_memory_answers_read_stored_slot_keys_and_values(lm, adapted, tmp_path):
    # Given memories read at block 1, and a manual indexed with stored keys/values and without
    from h2mt_jax.hierarchy.memory import memory_prompt

    inner = adapted.with_config(mem_pool="mean").with_mem_layer(1)
    inner.params = dict(inner.params, inject=inner.params["inject"] * 3.0)
    text = generate_manual(2, chapters=1).text
    index, plain = inner.build(text), inner.build(text, kv_store="none")
    assert index.kv.has_slots and plain.kv is None
    m = index.memories.shape[1]
    alm = inner.answer_lm
    model = alm.model
    # Then a leaf's stored slots are the keys/values of its memories read after the chat
    # preamble, with the injection (a full pass, keys rotated back from their positions)
    preamble = inner.kv_prefix
    mem = jnp.asarray(index.node_memories([2]))  # [1, m, d]
    x, inj = memory_prompt(inner.params, 1, jnp.asarray(inner.embedding[preamble])[None], mem,
                           jnp.zeros((1, 0, mem.shape[-1])))
    _, kvs = model(x, inject=inj)
    p = len(preamble)
    pos = jnp.arange(p + m, dtype=jnp.int32)[None]
    seg_k, seg_v = index.kv.gather_slots([2])
    for layer in (0, len(kvs) - 1):
        np.testing.assert_allclose(seg_k[layer], unrope(kvs[layer][0], pos, lm.config)[0, p:],
                                   atol=2e-5)
        np.testing.assert_allclose(seg_v[layer], kvs[layer][1][0, p:], atol=2e-5)
    # and with a template whose opening is the preamble, one leaf read from them answers as
    # the prefilled slots do
    template = "{context}\n\nQuestion: {input}\nAnswer:"
    assert prompts.split_prompt(lm.tokenizer, template, "Which pump?")[0] == preamble
    one = [inner.answer(ix, "Which pump?", template=template, route="oracle", gold_leaves=[2],
                        answer_from="memory", max_new_tokens=4) for ix in (index, plain)]
    assert one[0].text == one[1].text and one[0].memory_tokens == m
    # Two leaves: each read from its own stored slots, in document order
    pre, post = prompts.split_prompt(lm.tokenizer, prompts.template_for("synthetic"), "Which?")
    k2, v2 = index.kv.gather_slots([0, 2])
    want = alm.generate_with_segment(pre, k2, v2, post, 4).tokens[0]
    got = inner.answer(index, "Which?", route="oracle", gold_leaves=[2, 0],
                       answer_from="memory", max_new_tokens=4)
    assert lm.tokenizer.decode(want, skip_special_tokens=True).strip() == got.text
    assert got.memory_tokens == 2 * m
    # Saved and loaded they are kept; an index saved without them prefills the slots
    inner.save_index(index, tmp_path / "idx")
    _, again = H2MT.load_index(tmp_path / "idx", lm=lm)
    np.testing.assert_array_equal(again.kv.gather_slots([2])[0], seg_k)
    again.kv.slot_k = again.kv.slot_v = None
    inner.save_index(again, tmp_path / "old")
    _, old = H2MT.load_index(tmp_path / "old", lm=lm)
    assert not old.kv.has_slots
    assert (inner.answer(old, "Which pump?", template=template, route="oracle", gold_leaves=[2],
                         answer_from="memory", max_new_tokens=4).text == one[1].text)
    # store_slots=False keeps the other keys/values only; it must be a boolean
    assert not inner.with_config(store_slots=False).build(text).kv.has_slots
    with pytest.raises(ValueError, match="store_slots"):
        inner.with_config(store_slots="yes")


def test_pool_weights_cover_each_leaf_once_in_m_runs():
    # Given leaves of 10, 3 (shorter than m) and 0 tokens, padded to 12, and m = 4 runs
    w = np.asarray(pool_weights(jnp.asarray([10, 3, 0]), 12, 4))
    # Then every run averages consecutive real tokens (weights sum to 1, never on padding),
    # and together the runs of a leaf at least m long cover each of its tokens exactly once
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    assert (w[0, :, 10:] == 0).all() and (w[1, :, 3:] == 0).all() and (w[2, :, 1:] == 0).all()
    np.testing.assert_array_equal((w[0] > 0).sum(0)[:10], 1)
    assert [np.flatnonzero(r).tolist() for r in w[0]] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert [np.flatnonzero(r).tolist() for r in w[1]] == [[0], [0], [1], [2]]


def test_mean_pooled_memories_average_the_leaf_pass(lm, adapted):
    # Given two leaves through the encoder, pooled into m = 3 runs
    enc = nnx.merge(lm.graphdef, encoder_params(lm.params, adapted.params))
    toks = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (2, 16), 5, 200), np.int32)
    lens = np.asarray([16, 7], np.int32)
    mem, keys, values, leaf_k, leaf_v = leaf_pass(enc, adapted.params, jnp.asarray(toks),
                                                  jnp.asarray(lens), "mean")
    # Then each memory is the mean of its run's final hidden states, and its keys (before
    # RoPE) and values the means of the run's own keys and values, in every layer
    h = np.asarray(enc(enc.embed(jnp.asarray(toks)))[0])
    runs = [[(0, 5), (5, 10), (10, 16)], [(0, 2), (2, 4), (4, 7)]]
    for b in range(2):
        for j, (a, e) in enumerate(runs[b]):
            np.testing.assert_allclose(mem[b, j], h[b, a:e].mean(0), atol=1e-5)
            np.testing.assert_allclose(keys[:, b, j], np.asarray(leaf_k)[:, b, a:e].mean(1),
                                       atol=1e-5)
            np.testing.assert_allclose(values[:, b, j], np.asarray(leaf_v)[:, b, a:e].mean(1),
                                       atol=1e-5)
    # and the write-token pass gives the leaf tokens the same keys (padding and write tokens
    # come after them), with memories of its own
    w_mem, _, _, w_k, _ = leaf_pass(enc, adapted.params, jnp.asarray(toks), jnp.asarray(lens),
                                    "write")
    np.testing.assert_allclose(np.asarray(w_k)[:, 0], np.asarray(leaf_k)[:, 0], atol=1e-5)
    assert not np.allclose(w_mem, mem, atol=1e-3)
    with pytest.raises(ValueError, match="mem_pool"):
        H2MTConfig(mem_pool="max")


def test_reconstruction_loss_falls_on_a_tiny_run(smollm2_tokenizer):
    # Given a tiny backbone whose (frozen) embeddings and head are large enough for its logits
    # to move, a memory_lm task over two short manuals and one fixed reconstruction batch
    lm = tiny_lm_with(smollm2_tokenizer, seed=4)
    lm.params["embedding"].value = lm.params["embedding"].value * 25.0
    lm.params["lm_head"]["kernel"].value = lm.params["lm_head"]["kernel"].value * 25.0

    c = get_config("tiny")
    c.train.batch_size = 4
    docs = [(f"m{i}", generate_manual(10 + i, chapters=1).text, None) for i in range(2)]
    docs = [(d, t, parse.parse_document(t, "markdown")) for d, t, _ in docs]
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    batches = [b for b in task.examples(docs, 0) if b["objective"][0] == 0]
    batch = jax.tree.map(jnp.asarray, batches[0])
    trainable = task.init(jax.random.PRNGKey(0))
    opt = optax.adam(1e-2)
    state = opt.init(trainable)

    @jax.jit
    def step(tr, st):
        (loss, _), g = jax.value_and_grad(task.loss, has_aux=True)(tr, lm.params, batch)
        up, st = opt.update(g, st, tr)
        return optax.apply_updates(tr, up), st, loss

    losses = []
    for _ in range(60):
        trainable, state, loss = step(trainable, state)
        losses.append(float(loss))
    # Then the reconstruction NLL falls well below where it started
    assert losses[-1] < 0.7 * losses[0], losses


def test_pretraining_examples_hold_the_leaf_and_its_target(lm):
    # Given one document cut into leaves
    c = get_config("tiny")
    c.train.batch_size = 1
    text = generate_manual(3, chapters=1).text
    docs = [("d", text, parse.parse_document(text, "markdown"))]
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    leaves = task.leaves(docs)[0]
    batches = task.examples(docs, 0)
    tok = lm.tokenizer
    cue = {o: tok(CUES[o], add_special_tokens=False)["input_ids"] for o in (0, 1)}
    # Then every reconstruction example's labels are its own leaf (then the end token), and
    # every continuation example's labels are the leaf after its own
    seen = {0: 0, 1: 0}
    for b in batches:
        o = int(b["objective"][0])
        leaf = list(b["leaf"][0][:b["leaf_len"][0]])
        labels = [int(x) for x in b["labels"][0] if x >= 0]
        assert list(b["pre"][0]) == tok(PRE, add_special_tokens=False)["input_ids"]
        assert list(b["post"][0][:len(cue[o])]) == cue[o]
        target = leaf if o == 0 else leaves[leaves.index(leaf) + 1]
        assert labels[:-1] == target and labels[-1] in lm.eos_ids
        seen[o] += 1
    assert seen[0] >= 1 and seen[1] >= 1


def test_teacher_targets_come_from_the_text_pass(lm):
    # Given the same question and answer over two different contexts
    tok = lm.tokenizer
    tpl = prompts.template_for("synthetic")
    answer = tok(" 45 rpm", add_special_tokens=False)["input_ids"] + [lm.eos_ids[0]]
    a = prompts.prompt_ids(tok, tpl, "The pump runs at 45 rpm.", "How fast is the pump?")
    b = prompts.prompt_ids(tok, tpl, "The valve is blue and old.", "How fast is the pump?")
    ta = teacher_targets(lm, a, answer, start=20, seq_len=40, kind="kl", topk=8)
    tb = teacher_targets(lm, b, answer, start=20, seq_len=40, kind="kl", topk=8)
    rows = slice(19, 19 + len(answer))
    # Then the targets sit at the student's label rows only, and changing the text changes them
    assert np.all(ta["t_logp"][:19] <= -1e8) and np.all(ta["t_logp"][rows] > -1e8)
    assert not np.allclose(ta["t_logp"][rows], tb["t_logp"][rows], atol=1e-4)
    # and the greedy kind returns the teacher's own answer, ending with the end token
    g = teacher_targets(lm, a, answer, 20, 40, "tokens", max_new_tokens=4)
    assert g["t_answer"][-1] == lm.eos_ids[0] and 1 <= len(g["t_answer"]) <= 5


def test_a_resumed_run_reads_the_teachers_targets_instead_of_running_it_again(tmp_path,
                                                                              monkeypatch):
    # Given the tiny QA config with distillation, whose examples are built once in a workdir
    from configs.memory_qa import get_config as qa_config
    from h2mt_jax.train import h2mt_qa

    c = qa_config("tiny")
    c.data.hotpotqa_records, c.data.train_docs, c.train.distill = 0, 1, "kl"
    first = h2mt_qa.H2MTQATask(c, progress=False, workdir=str(tmp_path))
    built = first.examples(first.train_items)
    assert len(list((tmp_path / "indexes" / "teacher").glob("*.npz"))) == len(built)
    # When a second task over the same workdir builds them again, the teacher must not run
    monkeypatch.setattr(h2mt_qa, "teacher_targets",
                        lambda *a, **k: pytest.fail("the teacher ran again"))
    second = h2mt_qa.H2MTQATask(c, progress=False, workdir=str(tmp_path))
    again = second.examples(second.train_items)
    # Then every example carries the same targets
    for a, b in zip(built, again):
        assert a.item.question == b.item.question and a.teacher.keys() == b.teacher.keys()
        for name in a.teacher:
            np.testing.assert_array_equal(a.teacher[name], b.teacher[name])


def test_text_batches_train_the_decoder_on_the_gold_leaves_text(tmp_path):
    # Given the tiny QA config whose batches take turns between memories and the gold text
    from configs.memory_qa import get_config as qa_config
    from h2mt_jax.backbone.lora import merge_lora
    from h2mt_jax.errors import ConfigError
    from h2mt_jax.train import h2mt_qa
    from h2mt_jax.train.trainable import lora_scale

    c = qa_config("tiny")
    c.data.hotpotqa_records, c.data.train_docs, c.train.read_modes = 0, 1, "memory,text"
    task = h2mt_qa.H2MTQATask(c, progress=False, workdir=str(tmp_path))
    ex = task.examples(task.train_items)[0]
    gold = ex.index.leaves_for_spans(ex.item.gold_spans)
    prompt = task._gold_prompt(ex.item, ex.index, gold)
    assert ex.text_ids[:len(prompt)] == prompt
    answer = ex.text_ids[len(prompt):]
    tr = task.init(jax.random.PRNGKey(0))
    tr["lora"] = _nudge(tr["lora"], jax.random.PRNGKey(1))  # adapters that change the logits
    row = h2mt_qa.pad_examples([ex], task.cfg)[0]
    batch = jax.tree.map(lambda x: jnp.asarray(x)[None], row)
    # When a batch is read as text (mode 1 = the second read mode)
    _, text_m = task.loss(tr, task.frozen(), dict(batch, mode=jnp.array([1])))
    _, mem_m = task.loss(tr, task.frozen(), dict(batch, mode=jnp.array([0])))
    # Then its answer loss is the adapted decoder's NLL of the answer after the gold text
    model = nnx.merge(task.lm.graphdef, merge_lora(task.lm.params, tr["lora"],
                                                   lora_scale(c.train)))
    logp = jax.nn.log_softmax(model.logits(model(model.embed(jnp.asarray([ex.text_ids])))[0][0]))
    want = -np.mean([float(logp[len(prompt) - 1 + j, a]) for j, a in enumerate(answer)])
    np.testing.assert_allclose(float(text_m["answer_loss"]), want, rtol=1e-4)
    assert abs(float(text_m["answer_loss"]) - float(mem_m["answer_loss"])) > 1e-3
    # and each step's metrics name the reading it trained (the curves split by it)
    from h2mt_jax.hierarchy.loss import QA_READ_MODES

    assert QA_READ_MODES[int(text_m["read_mode"])] == "text"
    assert QA_READ_MODES[int(mem_m["read_mode"])] == "memory"
    # and text alone, which trains no memory, is refused
    c.train.read_modes = "text"
    with pytest.raises(ConfigError, match="trains no memory"):
        h2mt_qa.H2MTQATask(c, progress=False)


def test_pretrain_loss_reads_one_mode_per_batch(lm):
    # Given a batch and its copy marked for the other reading
    c = get_config("tiny")
    text = generate_manual(5, chapters=1).text
    docs = [("d", text, parse.parse_document(text, "markdown"))]
    c.train.batch_size = 2
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    batch = jax.tree.map(jnp.asarray, task.examples(docs, 0)[0])
    tr = task.init(jax.random.PRNGKey(0))
    other = dict(batch, mode=1 - batch["mode"])
    la, ma = pretrain_loss(tr, lm.params, lm.graphdef, batch, lora_scale=1.0)
    lb, mb = pretrain_loss(tr, lm.params, lm.graphdef, other, lora_scale=1.0)
    # Then the losses differ (two readings) and the metrics say which one ran
    assert float(ma["mode"]) != float(mb["mode"])
    assert abs(float(la) - float(lb)) > 1e-6


def test_bad_input_memory_larger_than_a_leaf_and_unknown_modes(lm):
    with pytest.raises(ValueError, match="exceeds the leaf length"):
        H2MTConfig(build=BuildConfig(leaf_tokens=16, title_tokens=4), mem_tokens=17)
    from h2mt_jax.errors import ConfigError
    c = get_config("tiny")
    c.train.read_modes = "memory,text"
    with pytest.raises(ConfigError, match="read_modes"):
        MemoryLMTask(c, lm=lm, progress=False, documents=([("d", "x", None)], []))
    c.train.read_modes = ""
    c.data.sources = "longbench"
    with pytest.raises(ConfigError, match="data.sources"):
        MemoryLMTask(c, lm=lm, progress=False)


def test_wikitext_articles_split_at_top_level_headings():
    text = " = A = \n x \n = = Sub = = \n y \n = B = \n z \n"
    arts = wikitext_articles(text)
    assert len(arts) == 2 and arts[0].startswith("= A =") and "Sub" in arts[0]
    assert arts[1].startswith("= B =")



def test_shipped_checkpoint_loads_by_name_and_fits_the_backbone(smollm2):
    from h2mt_jax.backbone.lora import check_lora
    from h2mt_jax.hierarchy.h2mt import resolve_checkpoint

    # When the shipped checkpoint is loaded by name
    h = H2MT.load("smollm2-135m-h2mt", smollm2)
    path = resolve_checkpoint("smollm2-135m-h2mt")
    # Then its memory parameters and both adapters fit SmolLM2, it is small enough to ship, and
    # it carries trained encoder and decoder adapters
    d = smollm2.config.hidden_size
    assert h.params["leaf_write"].shape == (h.config.mem_tokens, d) and h.config.mem_tokens > 1
    check_lora(h.lora, smollm2.params, path)
    check_lora(h.params["enc_lora"], smollm2.params, path)
    assert any(float(jnp.abs(ad["b"]).max()) > 0 for ad in h.lora.values())
    assert any(float(jnp.abs(ad["b"]).max()) > 0 for ad in h.params["enc_lora"].values())
    if h.config.mem_layer >= 1:  # memories injected at a block need the inject map
        assert h.params["inject"].shape == (d, d)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    assert size <= 20 * 10 ** 6, size
    # and an index it builds with its own settings can serve its default answer mode
    needs_kv = h.config.answer_from in ("memory_kv", "leaf_kv")
    assert not needs_kv or h.config.kv_store != "none", h.config
    # and a name that is not shipped is left as a path
    assert resolve_checkpoint("runs/x/model") == "runs/x/model"


def test_adapters_saved_in_bfloat16_load_back_as_float32(tmp_path, lm, adapted):
    # Given a checkpoint saved with its adapters in bfloat16
    import ml_dtypes

    adapted.save(tmp_path / "half", adapters_dtype="bfloat16")
    adapted.save(tmp_path / "full")
    back = H2MT.load(tmp_path / "half", lm)
    # Then it is smaller, the adapters come back as float32 rounded to bfloat16, and the other
    # parameters exactly
    assert (os.path.getsize(tmp_path / "half" / "h2mt.safetensors")
            < os.path.getsize(tmp_path / "full" / "h2mt.safetensors"))
    half = lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    for got, want in ((back.lora, adapted.lora),
                      (back.params["enc_lora"], adapted.params["enc_lora"])):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(g), half(w))
    np.testing.assert_array_equal(back.params["read"], adapted.params["read"])
    with pytest.raises(ValueError, match="adapters_dtype"):
        adapted.save(tmp_path / "bad", adapters_dtype="int8")


def test_checkpoint_reading_memories_at_a_block_needs_its_inject_map(tmp_path, lm, adapted):
    # Given a checkpoint whose memories are injected at block 1 but whose file lost `inject`
    inner = adapted.with_mem_layer(1)
    inner.save(tmp_path / "ok")
    assert H2MT.load(tmp_path / "ok", lm).config.mem_layer == 1
    H2MT(lm, inner.config, {k: v for k, v in inner.params.items() if k != "inject"},
         inner.lora, inner.lora_scale).save(tmp_path / "bad")
    # Then loading it names the missing parameter
    with pytest.raises(ValueError, match="params/inject of shape"):
        H2MT.load(tmp_path / "bad", lm)


def test_checkpoint_of_another_backbone_is_refused(tmp_path, lm, adapted, smollm2_tokenizer):
    # A checkpoint of SmolLM2 given a tiny backbone: the error names both
    with pytest.raises(ValueError, match="smollm2-135m-instruct.*d=576"):
        H2MT.load("smollm2-135m-h2mt", lm)
    # A checkpoint of the same width whose adapters fit another backbone's kernels
    adapted.save(tmp_path / "ck")
    other = tiny_lm_with(smollm2_tokenizer, seed=3, intermediate_size=48)
    with pytest.raises(ValueError, match="adapter 'layers/.*do not fit"):
        H2MT.load(tmp_path / "ck", other)


def test_memory_pretraining_from_a_checkpoint_takes_m_and_pooling(tmp_path, lm, adapted):
    # Given a saved checkpoint with m=3 write-token memories
    adapted.save(tmp_path / "ck")
    docs = [("d", generate_manual(5, chapters=1).text, None)]
    c = get_config("tiny")
    c.checkpoint = str(tmp_path / "ck")
    # When memory pretraining continues from it with train.mem_tokens and train.mem_pool
    c.train.mem_tokens, c.train.mem_pool = 5, "mean"
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    # Then it trains m=5 mean-pooled memories over the saved encoder adapters; without the
    # fields it keeps the saved m and pooling
    assert (task.cfg.mem_tokens, task.cfg.mem_pool) == (5, "mean")
    for got, saved in zip(jax.tree.leaves(task.h2mt.params["enc_lora"]),
                          jax.tree.leaves(adapted.params["enc_lora"]), strict=True):
        np.testing.assert_array_equal(got, saved)
    c.train.mem_tokens, c.train.mem_pool = 0, ""
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    assert (task.cfg.mem_tokens, task.cfg.mem_pool, task.cfg.mem_layer) == (3, "write", -1)
    # train.mem_layer takes the memories from an inner layer, the read map re-fitted to them
    c.train.mem_layer = "1"
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))
    assert task.cfg.mem_layer == 1
    assert not np.allclose(task.h2mt.params["read"], adapted.params["read"])
    c.train.mem_layer = "top"
    with pytest.raises(ConfigError, match="train.mem_layer must be a whole number"):
        MemoryLMTask(c, lm=lm, progress=False, documents=(docs, []))


def test_config_overrides_apply_over_a_checkpoint_only_when_set():
    from h2mt_jax.hierarchy.config import explicit_overrides

    assert explicit_overrides({"route_score": "fused", "k": 4, "mem_tokens": 9}) == {}
    assert explicit_overrides({"route_score": "memory", "fuse": "rrf", "k": 2}) == {
        "route_score": "memory", "fuse": "rrf", "k": 2}
    # a config file's defaults are H2MTConfig's: otherwise they would count as set on purpose
    # and override every checkpoint loaded through train.py / evaluate.py
    from configs.common import base_config
    section = base_config().h2mt
    assert explicit_overrides(section) == {}
    default = H2MTConfig()
    assert all(section[f] == getattr(default, f) for f in section if hasattr(default, f)
               and f not in ("build", "hmt"))


def test_text_baselines_also_run_with_the_checkpoint_adapters(tmp_path, adapted):
    from configs.longbench import get_config as lb_config
    from conftest import shared_data
    from h2mt_jax.eval.runner import run_evaluation

    data = shared_data("longbench", "qasper.jsonl")
    adapted.save(tmp_path / "ck")
    c = lb_config("tiny")
    c.data.path, c.method, c.checkpoint = str(data), "rag_bm25", str(tmp_path / "ck")
    c.output, c.eval.max_examples, c.eval.baseline_adapters = str(tmp_path / "o.json"), 1, True
    c.eval.warmup = False
    out = run_evaluation(c, lm=adapted.lm, progress=False)
    # Then the table has the baseline both ways, and the adapted run used the adapters
    assert set(out["summary"]) == {"rag_bm25", "rag_bm25+adapters"}
    c.checkpoint = ""
    with pytest.raises(ValueError, match="baseline_adapters"):
        run_evaluation(c, lm=adapted.lm, progress=False)


def test_warmup_each_compiles_every_example_before_its_timed_answer(tmp_path, adapted,
                                                                    monkeypatch):
    import h2mt_jax.eval.runner as runner
    from configs.longbench import get_config as lb_config
    from conftest import shared_data

    calls = []
    monkeypatch.setattr(runner, "warm_up", lambda method, it, settings, new_tokens=None:
                        calls.append((it.qid or it.doc_id, new_tokens)))
    c = lb_config("tiny")
    c.data.path, c.method = str(shared_data("longbench", "qasper.jsonl")), "rag_bm25"
    c.output, c.eval.max_examples = str(tmp_path / "o.json"), 2
    runner.run_evaluation(c, lm=adapted.lm, progress=False)
    assert len(calls) == 1 and calls[0][1] is None  # the default: the first example, once
    calls.clear()
    c.eval.warmup_each, c.output = True, str(tmp_path / "each.json")
    runner.run_evaluation(c, lm=adapted.lm, progress=False)
    with open(c.output) as f:
        ids = [row["id"] for row in json.load(f)["examples"]]
    assert len(ids) == 2 and [x[0] for x in calls] == ids and all(x[1] is None for x in calls)


def test_resizing_the_write_tokens_keeps_the_trained_rows_and_builds_m_memories(adapted):
    text = generate_manual(2, chapters=1).text
    for m in (2, 3, 7):
        h = adapted.with_mem_tokens(m)
        assert h.config.mem_tokens == m and adapted.config.mem_tokens == 3
        for name in ("leaf_write", "agg_write", "agg_query"):
            want = np.concatenate([np.asarray(adapted.params[name])] * 3)[:m]
            np.testing.assert_array_equal(np.asarray(h.params[name]), want)
        assert h.params["enc_lora"] is adapted.params["enc_lora"] and h.lora is adapted.lora
        index = h.build(text, fmt="auto")
        assert index.memories.shape[1] == m and index.kv.write_k.shape[2] == m
    # the first rows write what they wrote before: a leaf's first memory does not change
    # when later write tokens are dropped (they come after it in the causal pass)
    a = adapted.build(text, fmt="auto", kv_store="none")
    b = adapted.with_mem_tokens(2).build(text, fmt="auto", kv_store="none")
    n = a.spec.n_leaves
    np.testing.assert_allclose(b.memories[:n], a.memories[:n, :2], atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the leaf length"):
        adapted.with_mem_tokens(49)


def test_qa_batches_are_padded_when_drawn_as_up_front(tmp_path):
    # Given the tiny QA task (two training manuals: trees of different sizes)
    import grain

    from configs.memory_qa import get_config as qa_config
    from h2mt_jax.train import h2mt_qa

    c = qa_config("tiny")
    c.data.hotpotqa_records, c.data.train_docs, c.train.batch_size = 0, 2, 2
    task = h2mt_qa.H2MTQATask(c, progress=False, workdir=str(tmp_path))
    examples = task.examples(task.train_items)
    eager = h2mt_qa.pad_examples(examples, task.cfg)
    # When the training data set pads each question only when its batch is drawn
    ds = task.dataset()
    order = list(grain.MapDataset.source(list(range(len(examples))))
                 .shuffle(seed=c.seed).repeat(None)[:4])
    # Then its batches hold exactly the rows padded up front, in the same shuffled order, with
    # the read mode of each batch's turn
    for b in range(2):
        batch = ds[b]
        for j in range(2):
            want = eager[order[2 * b + j]]
            got = jax.tree.map(lambda x: x[j], {k: v for k, v in batch.items() if k != "mode"})
            jax.tree.map(np.testing.assert_array_equal, got,
                         {k: v for k, v in want.items() if k != "mode"})
        assert (batch["mode"] == b % len(task.modes)).all()
