"""A reference (OswaldHe/HMT-pytorch) checkpoint converts into an HMT with the same logits.

`reference_logits` restates the reference's `RecurrentWrapper.forward` (train mode) in a few
lines of PyTorch, from its documented behaviour: summary pass over the first half of each segment
with the `mem` prompt around it, cross-attention recall over the last `mem_recall_context`
memories, the main pass `[memory ‖ sensory ‖ segment ‖ memory]`, the new memory from the last
hidden state.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny, torch_model
from h2mt_jax.hmt import load_hmt_pytorch
from h2mt_jax.weights import CheckpointError

SEG, KS, DH, N = 26, 4, 12, 3  # segment_length, num_sensory, recall dim, recall context
L = SEG - 2 - KS


def reference_logits(model, sd, ids, stage=2):
    emb = model.get_input_embeddings()
    m0, p = sd["memory_cell.memory"][None], sd.get("mem")

    def cell(seg, memory, prepend=None):
        x = emb(seg)
        if prepend is not None:
            x = torch.cat([emb(prepend), x], 1)
        out = model(inputs_embeds=torch.cat([memory, x, memory], 1), output_hidden_states=True)
        skip = 1 + (0 if prepend is None else prepend.shape[1])
        return out.logits[:, skip:-1], out.hidden_states[-1][:, -1:], seg[:, -KS:]

    memory_seq, prepend, outs = None, None, []
    for start in range(0, ids.shape[1], L):
        seg = ids[:, start:start + L]
        memory = None
        if stage == 2 and memory_seq is not None:
            _, q, _ = cell(seg[:, :int(round(L * 0.5))], p[None].expand(ids.shape[0], 1, -1))
            xq, mk = q @ sd["cross_attn.wq.weight"].T, memory_seq @ sd["cross_attn.wk.weight"].T
            w = torch.softmax(xq @ mk.transpose(1, 2) / math.sqrt(DH), -1)
            memory = w @ memory_seq
        if memory is None:
            memory = m0.expand(ids.shape[0], 1, -1) if stage == 2 or start == 0 else last
        logits, last, prepend = cell(seg, memory, prepend)
        outs.append(logits)
        memory_seq = last if memory_seq is None else torch.cat([memory_seq, last], 1)[:, -N:]
    return torch.cat(outs, 1)


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
