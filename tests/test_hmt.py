"""HMT: the scan against a plain loop, the FIFO cache, gradients, streaming, training through the
trainer, checkpoints, the config mapping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import h2mt_jax
from conftest import make_tiny
from h2mt_jax.hmt import HMT, HMTConfig
from h2mt_jax.hmt.cell import _push
from h2mt_jax.hmt.loss import window_loss, window_segments
from h2mt_jax.io import FormatError

CFG = HMTConfig(segment_length=24, num_sensory=4, recall_dim=16, recall_context=3)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return h2mt_jax.load_lm(make_tiny(tmp_path_factory.mktemp("m"), "llama", seed=5))


def lm_task(tmp_path, lm, tokens, seed=0, **train):
    """The `hmt_lm` task of configs/wikitext.py over `tokens`, with CFG's memory and `train`
    overrides, and its config (workdir in tmp_path, no resume)."""
    from configs.wikitext import get_config
    from h2mt_jax.train.hmt_lm import HMTLMTask

    c = get_config()
    c.workdir, c.resume, c.seed = str(tmp_path / "run"), False, seed
    c.data.path, c.data.eval_tokens = "", 200
    for k in c.hmt.keys():
        c.hmt[k] = getattr(CFG, k)
    c.train.checkpoint_every = 10_000  # one checkpoint, at the end
    c.train.update(train)
    return HMTLMTask(c, lm=lm, progress=False, tokens=tokens), c


@pytest.fixture(scope="module")
def hmt(tiny_lm):
    h = HMT.create(tiny_lm, CFG, seed=1)
    # Larger recall projections than the default init, so recall weights differ visibly.
    h.params = {**h.params, "w_q": h.params["w_q"] * 8, "w_k": h.params["w_k"] * 8}
    return h


def loop_reference(hmt: HMT, ids: np.ndarray):
    """A plain Python loop over segments with a list as the FIFO cache: no scan, no padding."""
    lm, cfg, p = hmt.lm, hmt.config, jax.tree.map(np.asarray, hmt.params)
    emb = np.asarray(lm.params["embedding"].value)
    hidden = lambda x: np.asarray(lm.hidden_states(jnp.asarray(x[None])))[0]  # noqa: E731
    L, ks = cfg.tokens_per_segment, cfg.num_sensory
    fifo, logits, mems, sensory = [], [], [], None
    for n, start in enumerate(range(0, len(ids), L)):
        seg = ids[start:start + L]
        if n == 0:
            p_n = p["memory"][0]
        elif cfg.stage == 1:
            p_n = mems[-1]
        else:
            q = hidden(np.concatenate([p["summary"], emb[seg[:cfg.query_tokens]], p["summary"]]))[-1]
            m = np.stack(fifo)
            s = (q @ p["w_q"]) @ (m @ p["w_k"]).T / np.sqrt(cfg.recall_dim)
            w = np.exp(s - s.max())
            p_n = (w / w.sum()) @ m
        parts = [p_n[None]] + ([emb[sensory]] if n > 0 and ks else []) + [emb[seg], p_n[None]]
        h = hidden(np.concatenate(parts))
        off = 1 + (ks if n > 0 else 0)
        logits.append(np.asarray(lm.model.logits(jnp.asarray(h[off:off + len(seg)]))))
        mems.append(h[-1])
        fifo = (fifo + [h[-1]])[-cfg.recall_context:]
        sensory = seg[-ks:]
    return np.concatenate(logits), np.stack(mems)


@pytest.mark.parametrize("length", [18 * 7, 18 * 7 - 5, 10])
@pytest.mark.parametrize("stage", [1, 2])
def test_scan_equals_python_loop(hmt, stage, length):
    # Given more segments than the recall context (7 > N = 3), a partial last segment, or a
    # sequence shorter than one segment
    h = HMT(hmt.lm, HMTConfig(**{**CFG.to_dict(), "stage": stage}), hmt.params)
    ids = np.random.default_rng(stage).integers(0, 128, size=length)
    # When the jitted scan and the plain loop read it
    want_logits, want_mems = loop_reference(h, ids)
    got_logits = np.asarray(h.logits(ids[None]))[0]
    got_mems = np.asarray(h.memories(ids[None]))[0]
    # Then logits for every token and every segment memory agree
    np.testing.assert_allclose(got_logits, want_logits, atol=2e-4)
    np.testing.assert_allclose(got_mems, want_mems, atol=2e-4)


def test_memory_matters(hmt):
    ids = np.random.default_rng(0).integers(0, 128, size=(1, 90))
    other = hmt.params["memory"] + 1.0
    changed = HMT(hmt.lm, hmt.config, {**hmt.params, "memory": other})
    a, b = np.asarray(hmt.logits(ids)), np.asarray(changed.logits(ids))
    assert np.abs(a[:, -18:] - b[:, -18:]).max() > 1e-3  # m0 reaches the last segment


def test_fifo_ring_buffer_keeps_last_n():
    cache, count = jnp.zeros((1, 3, 2)), jnp.int32(0)
    for i in range(1, 6):  # push 5 memories into 3 slots
        cache, count = _push(cache, count, jnp.full((1, 2), float(i)))
        if i == 3:
            assert sorted(np.asarray(cache)[0, :, 0]) == [1.0, 2.0, 3.0]
    assert int(count) == 5
    assert sorted(np.asarray(cache)[0, :, 0]) == [3.0, 4.0, 5.0]


def test_gradients_reach_every_parameter_across_segments(hmt):
    # Given a 4-segment window whose loss covers the last segment only
    l = CFG.tokens_per_segment
    win = np.random.default_rng(3).integers(0, 128, size=(2, 4 * l + 1))
    ids, tgt, lens = map(jnp.asarray, window_segments(win, l))
    from h2mt_jax.backbone.lora import init_lora

    lora = init_lora(hmt.lm.params, 2, jax.random.PRNGKey(0))
    lora = jax.tree.map(lambda x: x + 0.01, lora)
    for remat in (False, True, "dots"):
        grads = jax.grad(window_loss)(
            {"hmt": hmt.params, "lora": lora}, hmt.lm.graphdef, hmt.lm.params, ids, tgt, lens,
            cfg=CFG, lora_scale=1.0, loss_segments=1, remat=remat)
        # Then every HMT parameter (m0 only acts on segment 0) and every adapter gets a gradient
        for k, g in grads["hmt"].items():
            assert np.abs(np.asarray(g)).max() > 0, k
        for k, g in grads["lora"].items():
            assert np.abs(np.asarray(g["a"])).max() > 0 and np.abs(np.asarray(g["b"])).max() > 0, k


@pytest.mark.parametrize("stage", [1, 2])
def test_window_loss_equals_the_loss_of_the_inference_logits(hmt, stage):
    # Given windows of 4 segments and the same HMT read by its inference path (padding test,
    # one summary pass per segment, logits for every token)
    import dataclasses

    cfg = dataclasses.replace(CFG, stage=stage)
    model = HMT(hmt.lm, cfg, hmt.params)
    l = cfg.tokens_per_segment
    win = np.random.default_rng(8).integers(0, 128, size=(2, 4 * l + 1))
    logits = np.asarray(model.logits(win[:, :-1]), np.float64)[:, -l:]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, win[:, -l:, None], -1).mean()
    ids, tgt, lens = map(jnp.asarray, window_segments(win, l))
    # When the training loss runs (summaries batched, no padding test), with every remat policy
    # and the LM head in one piece or in chunks that do not divide the tokens
    for remat, chunk in [("none", 0), ("dots", 7), ("full", 5), (False, 64)]:
        got = window_loss({"hmt": model.params}, hmt.lm.graphdef, hmt.lm.params, ids, tgt, lens,
                          cfg=cfg, lora_scale=1.0, loss_segments=1, remat=remat,
                          logit_chunk=chunk)
        # Then it is the mean next-token loss of the last segment, as inference computes it
        np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=f"{remat} {chunk}")
    grads = [jax.grad(window_loss)({"hmt": model.params}, hmt.lm.graphdef, hmt.lm.params, ids,
                                   tgt, lens, cfg=cfg, lora_scale=1.0, loss_segments=1,
                                   remat=remat, logit_chunk=chunk)["hmt"]
             for remat, chunk in [("none", 0), ("full", 5)]]
    for k in grads[0]:
        np.testing.assert_allclose(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="remat must be none, full or dots"):
        window_loss({"hmt": model.params}, hmt.lm.graphdef, hmt.lm.params, ids, tgt, lens,
                    cfg=cfg, lora_scale=1.0, loss_segments=1, remat="some")


def test_perplexity_streams_and_matches_logits(hmt):
    ids = np.random.default_rng(4).integers(0, 128, size=(1, 18 * 9 + 7))
    logits = np.asarray(hmt.logits(ids))[0, :-1]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    want = float(np.exp(-logp[np.arange(len(logp)), ids[0, 1:]].mean()))
    for chunk in (2, 3, 16):
        got = hmt.perplexity(ids, chunk=chunk)
        assert got["tokens"] == ids.shape[1] - 1
        assert got["ppl"] == pytest.approx(want, rel=1e-4)


def test_training_lowers_loss_and_roundtrips(hmt, tmp_path):
    from h2mt_jax.train.trainer import train_and_evaluate

    # Given a repeating pattern, trained through the trainer (memory parameters and LoRA)
    pattern = np.tile(np.random.default_rng(5).integers(0, 128, size=37), 60)
    task, c = lm_task(tmp_path, hmt.lm, pattern, seed=1, steps=30, batch_size=2, bptt_depth=3,
                      lr=3e-2, warmup=2, trainable="memory+lora", lora_rank=4)
    results = train_and_evaluate(c, c.workdir, task=task, progress=False)
    # Then the loss falls
    losses = results["train_losses"]
    assert len(losses) == 30
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    # And the exported model is the trained one (same held-out perplexity as in memory), with
    # changed memory parameters and adapters, and it survives another save/load unchanged
    trained = HMT.load(tmp_path / "run" / "model", lm=hmt.lm)
    assert trained.lora is not None and trained.lora_scale == pytest.approx(16.0 / 4)
    assert np.abs(np.asarray(trained.params["memory"]) - np.asarray(task.hmt.params["memory"])
                  ).max() > 0
    assert any(np.abs(np.asarray(ab["b"])).max() > 0 for ab in trained.lora.values())
    got = trained.perplexity(task.eval_ids[None])
    assert got["ppl"] == pytest.approx(results["after"]["ppl"], rel=1e-5)
    trained.save(tmp_path / "ckpt")
    again = HMT.load(tmp_path / "ckpt", lm=hmt.lm)
    ids = pattern[None, :100]
    np.testing.assert_allclose(np.asarray(again.logits(ids)), np.asarray(trained.logits(ids)),
                               atol=1e-6)
    # And a run from that checkpoint (the two-stage schedule: here continued as stage 1) takes
    # the config's stage and carries the trained adapters and memory parameters on
    _, c2 = lm_task(tmp_path / "next", hmt.lm, pattern, steps=1, trainable="memory+lora",
                    lora_rank=4)
    c2.checkpoint, c2.hmt.stage, c2.hmt.segment_length = str(tmp_path / "ckpt"), 1, 30
    from h2mt_jax.errors import ConfigError
    from h2mt_jax.train.hmt_lm import HMTLMTask

    task2 = HMTLMTask(c2, lm=hmt.lm, progress=False, tokens=pattern)
    assert task2.hcfg.stage == 1 and task2.hcfg.segment_length == CFG.segment_length
    tr = task2.init(jax.random.PRNGKey(9))
    for k, ab in trained.lora.items():
        np.testing.assert_array_equal(np.asarray(tr["lora"][k]["b"]), np.asarray(ab["b"]))
    np.testing.assert_array_equal(np.asarray(tr["hmt"]["memory"]),
                                  np.asarray(trained.params["memory"]))
    # Adapters are never dropped or rescaled silently
    for key, value, match in [("trainable", "memory", "train.trainable=memory\\+lora"),
                              ("lora_rank", 2, "LoRA rank 4, scale 4; the config asks for rank 2")]:
        bad = c2.copy_and_resolve_references()
        bad.train[key] = value
        with pytest.raises(ConfigError, match=match):
            HMTLMTask(bad, lm=hmt.lm, progress=False, tokens=pattern)
    # A stage-1 checkpoint without recall parameters (as converted from the reference) continued
    # as stage 2 gets fresh ones, so that recall can learn; trained ones are kept
    import dataclasses

    zero = {**trained.params, "w_q": jnp.zeros_like(trained.params["w_q"]),
            "w_k": jnp.zeros_like(trained.params["w_k"])}
    HMT(hmt.lm, dataclasses.replace(CFG, stage=1), zero, trained.lora,
        trained.lora_scale).save(tmp_path / "stage1")
    c2.checkpoint, c2.hmt.stage = str(tmp_path / "stage1"), 2
    task3 = HMTLMTask(c2, lm=hmt.lm, progress=False, tokens=pattern)
    assert task3.hcfg.stage == 2
    assert np.abs(np.asarray(task3.hmt.params["w_q"])).max() > 0
    np.testing.assert_array_equal(np.asarray(task3.hmt.params["memory"]),
                                  np.asarray(trained.params["memory"]))
    c2.checkpoint = str(tmp_path / "ckpt")
    kept = HMTLMTask(c2, lm=hmt.lm, progress=False, tokens=pattern)
    np.testing.assert_array_equal(np.asarray(kept.hmt.params["w_q"]),
                                  np.asarray(trained.params["w_q"]))


def test_config_from_config_section():
    from configs.common import base_config
    from h2mt_jax.errors import ConfigError

    # The defaults of configs/common.py are HMTConfig's, and every field maps over
    section = base_config().hmt
    assert HMTConfig.from_config(section) == HMTConfig()
    section.segment_length, section.stage = 40, 1
    assert HMTConfig.from_config(section) == HMTConfig(segment_length=40, stage=1)
    assert HMTConfig.from_config({"num_sensory": 0}) == HMTConfig(num_sensory=0)
    with pytest.raises(ConfigError, match="unknown HMT config field.*segment_len\\b"):
        HMTConfig.from_config({"segment_len": 40})
    with pytest.raises(ConfigError, match="leaves no room"):
        HMTConfig.from_config({"segment_length": 10})


def test_checkpoint_files(hmt, tmp_path):
    # Given a saved HMT
    hmt.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["hmt.json",
                                                                     "hmt.safetensors"]
    # A backbone of another hidden size is refused
    other = h2mt_jax.random_lm(hidden_size=32, head_dim=8, vocab_size=128)
    with pytest.raises(ValueError, match="backbone with d=64, this backbone has d=32"):
        HMT.load(tmp_path / "ckpt", lm=other)
    # And so is metadata of another format
    meta = tmp_path / "ckpt" / "hmt.json"
    meta.write_text(meta.read_text().replace("h2mt_jax.hmt/1", "h2mt_jax.hmt/0"))
    with pytest.raises(FormatError, match="has format 'h2mt_jax.hmt/0', expected"):
        HMT.load(tmp_path / "ckpt", lm=hmt.lm)


def test_bad_input(hmt, tmp_path):
    from h2mt_jax.train.trainer import train_and_evaluate

    with pytest.raises(ValueError, match="segment_length=10 leaves no room.*at least 35"):
        HMTConfig(segment_length=10, num_sensory=32)
    task, c = lm_task(tmp_path, hmt.lm, np.arange(30) % 128, steps=1, bptt_depth=2)
    with pytest.raises(ValueError, match="fewer than one window"):
        train_and_evaluate(c, c.workdir, task=task, progress=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        hmt.logits(np.array([[1, 500]]))
    with pytest.raises(ValueError, match="do not match"):
        HMT(hmt.lm, HMTConfig(recall_dim=8), hmt.params)
    with pytest.raises(FileNotFoundError, match="not an HMT checkpoint"):
        HMT.load(tmp_path)
