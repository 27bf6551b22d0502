"""A reference (OswaldHe/HMT-pytorch) checkpoint converts into an HMT with the same logits.

`reference_logits` runs the reference's `RecurrentWrapper.forward` (train mode) as restated in
PyTorch by `bench/hmt_reference.py` (the benches' reference on CPU): summary pass over the first
half of each segment with the `mem` prompt around it, cross-attention recall over the last
`mem_recall_context` memories, the main pass `[memory ‖ sensory ‖ segment ‖ memory]`, the new
memory from the last hidden state.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from bench.hmt_reference import TorchHMT
from conftest import make_tiny, torch_model
from h2mt_jax.hmt import load_hmt_pytorch
from h2mt_jax.weights import CheckpointError

SEG, KS, DH, N = 26, 4, 12, 3  # segment_length, num_sensory, recall dim, recall context
L = SEG - 2 - KS


def reference_logits(model, sd, ids, stage=2):
    """The reference's logits from its state dict, by the PyTorch restatement of the benches."""
    d = model.config.hidden_size
    zeros = np.zeros((d, DH), np.float32)
    th = TorchHMT(model, sd["memory_cell.memory"].numpy(),
                  sd["mem"].numpy() if stage == 2 else np.zeros((1, d), np.float32),
                  sd["cross_attn.wq.weight"].T.numpy() if stage == 2 else zeros,
                  sd["cross_attn.wk.weight"].T.numpy() if stage == 2 else zeros,
                  segment_length=SEG, num_sensory=KS, recall_context=N, stage=stage)
    return th.logits(ids)


def reference_state_dict(model, stage, peft=False):
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    std = model.get_input_embeddings().weight.std()
    sd = {"memory_cell.memory": torch.randn(1, d, generator=g) * std,
          "memory_cell.mem_map.linear.weight": torch.randn(d, d, generator=g),
          "memory_cell.mem_map.inv_linear.weight": torch.randn(d, d, generator=g)}
    if stage == 2:
        sd.update({"mem": torch.randn(1, d, generator=g) * std,
                   "cross_attn.wq.weight": torch.randn(DH, d, generator=g),
                   "cross_attn.wk.weight": torch.randn(DH, d, generator=g)})
    for k, v in model.state_dict().items():
        if not peft:
            sd["memory_cell.model." + k] = v.clone()
            continue
        base = "memory_cell.model.base_model.model."
        if k.endswith("q_proj.weight") or k.endswith("embed_tokens.weight"):
            stem = k[:-len(".weight")]
            sd[base + stem + ".base_layer.weight"] = v.clone()
            if "embed" in k:
                sd[base + stem + ".lora_embedding_A.default"] = torch.randn(2, v.shape[0], generator=g)
                sd[base + stem + ".lora_embedding_B.default"] = torch.randn(v.shape[1], 2, generator=g)
            else:
                sd[base + stem + ".lora_A.default.weight"] = torch.randn(2, v.shape[1], generator=g)
                sd[base + stem + ".lora_B.default.weight"] = torch.randn(v.shape[0], 2, generator=g)
        else:
            sd[base + k] = v.clone()
    return sd


@pytest.mark.parametrize("stage", [1, 2])
def test_converter_reproduces_reference_logits(tmp_path, stage):
    # Given a tiny random Llama backbone and a reference state dict saved with torch.save
    path = make_tiny(tmp_path, "llama", seed=7)
    model = torch_model(path)
    sd = reference_state_dict(model, stage)
    torch.save(sd, tmp_path / "hmt.pt")
    ids = torch.randint(0, 128, (2, L * 6 + 7), generator=torch.Generator().manual_seed(1))
    # When the checkpoint is converted and both compute logits
    hmt = load_hmt_pytorch(tmp_path / "hmt.pt", path, segment_length=SEG, num_sensory=KS,
                           mem_recall_hidden_dim=DH, mem_recall_context=N)
    with torch.no_grad():
        want = reference_logits(model, sd, ids, stage).numpy()
    got = np.asarray(hmt.logits(ids.numpy()))
    # Then the logits of every token agree
    assert hmt.config.stage == stage
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_peft_lora_is_merged(tmp_path):
    path = make_tiny(tmp_path, "llama", seed=8)
    model = torch_model(path)
    sd = reference_state_dict(model, 2, peft=True)
    torch.save(sd, tmp_path / "hmt.pt")
    hmt = load_hmt_pytorch(tmp_path / "hmt.pt", path, segment_length=SEG, num_sensory=KS,
                           mem_recall_hidden_dim=DH, mem_recall_context=N, lora_alpha=4.0)
    # The reference model with the adapters merged by hand (scale alpha / r = 2)
    base = "memory_cell.model.base_model.model."
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("q_proj.weight"):
                stem = base + name[:-len(".weight")]
                p += 2.0 * sd[stem + ".lora_B.default.weight"] @ sd[stem + ".lora_A.default.weight"]
            if name.endswith("embed_tokens.weight"):
                stem = base + name[:-len(".weight")]
                p += 2.0 * (sd[stem + ".lora_embedding_B.default"]
                            @ sd[stem + ".lora_embedding_A.default"]).T
    ids = torch.randint(0, 128, (1, L * 3 + 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = reference_logits(model, sd, ids, 2).numpy()
    np.testing.assert_allclose(np.asarray(hmt.logits(ids.numpy())), want, atol=1e-4)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = make_tiny(tmp_path, "llama", seed=9)
    sd = reference_state_dict(torch_model(path), 2)
    args = dict(segment_length=SEG, num_sensory=KS, mem_recall_hidden_dim=DH)
    bad = dict(sd)
    bad.pop("mem")
    torch.save(bad, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="missing tensor 'mem'"):
        load_hmt_pytorch(tmp_path / "a.pt", path, **args)
    bad = dict(sd, **{"memory_cell.extra_thing": torch.zeros(3)})
    torch.save(bad, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="memory_cell.extra_thing"):
        load_hmt_pytorch(tmp_path / "b.pt", path, **args)
    bad = dict(sd)
    bad.pop("memory_cell.model.model.layers.1.self_attn.v_proj.weight")
    torch.save(bad, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.v_proj.weight"):
        load_hmt_pytorch(tmp_path / "c.pt", path, **args)
    torch.save(sd, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError,
                       match=r"'cross_attn.wq.weight' has shape \(12, 64\), expected \(8, 64\)"):
        load_hmt_pytorch(tmp_path / "ok.pt", path, **{**args, "mem_recall_hidden_dim": 8})


def test_torch_restatement_trains_as_our_trainer(tmp_path):
    # Given a tiny random Llama read by both frameworks, the same memory parameters, windows and
    # optimizer settings (the benches' side-by-side and parity runs rest on this)
    import jax
    import jax.numpy as jnp
    import ml_collections
    import optax

    import h2mt_jax
    from bench.hmt_reference import TorchHMT, torch_optimizer
    from h2mt_jax.hmt import HMT, HMTConfig
    from h2mt_jax.hmt.loss import window_loss, window_segments
    from h2mt_jax.train.trainer import make_optimizer

    path = make_tiny(tmp_path, "llama", seed=11)
    cfg = HMTConfig(segment_length=SEG, num_sensory=KS, recall_dim=DH, recall_context=N)
    hmt = HMT.create(h2mt_jax.load_lm(path), cfg, seed=3)
    th = TorchHMT.from_hmt(torch_model(path).train(), hmt)
    for p in th.model.parameters():
        p.requires_grad_(False)
    t = ml_collections.ConfigDict(dict(steps=6, warmup=2, lr=3e-2, decay="cosine", clip=1.0,
                                       weight_decay=0.01))
    opt = make_optimizer(t)
    topt, sched = torch_optimizer([th.memory, th.summary, th.w_q, th.w_k], t.lr, t.warmup,
                                  t.steps, t.weight_decay)
    params, state = hmt.params, opt.init(hmt.params)
    rng = np.random.default_rng(5)
    for step in range(4):
        win = rng.integers(0, 128, size=(2, 3 * L + 1))
        ids, tgt, lens = map(jnp.asarray, window_segments(win, L))
        loss, g = jax.value_and_grad(lambda p: window_loss(
            {"hmt": p}, hmt.lm.graphdef, hmt.lm.params, ids, tgt, lens, cfg=cfg,
            lora_scale=1.0, loss_segments=1))(params)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        tloss = th.window_loss(torch.as_tensor(win))
        topt.zero_grad()
        tloss.backward()
        torch.nn.utils.clip_grad_norm_([th.memory, th.summary, th.w_q, th.w_k], t.clip)
        topt.step()
        sched.step()
        # Then every step's loss and the updated parameters agree
        assert abs(float(loss) - float(tloss.detach())) < 1e-4, step
    for name, tp in [("memory", th.memory), ("summary", th.summary), ("w_q", th.w_q),
                     ("w_k", th.w_k)]:
        np.testing.assert_allclose(np.asarray(params[name]), tp.detach().numpy(), atol=2e-4,
                                   err_msg=name)
