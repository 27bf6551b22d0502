"""Converts a checkpoint of the PyTorch reference (OswaldHe/HMT-pytorch) into an `HMT`.

The reference's `RecurrentWrapper` state dict holds:
- `memory_cell.memory` `[1, d]` (m0), `mem` `[1, d]` (the summary prompt p, stage 2),
- `cross_attn.wq.weight`, `cross_attn.wk.weight` `[d_h, d]` (stage 2),
- the backbone under `memory_cell.model.` (transformers names), or under
  `memory_cell.model.base_model.model.` with PEFT LoRA adapters (`lora_A`/`lora_B`,
  `lora_embedding_A`/`lora_embedding_B`), which are merged as `W + (alpha / r) B A`,
- `memory_cell.mem_map.*` (an unused projection), ignored.
"""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np

from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.hmt.model import HMT
from h2mt_jax.weights.convert import CheckpointError, build_model, hf_to_flat

BACKBONE = "memory_cell.model."
PEFT = "memory_cell.model.base_model.model."
IGNORED = ("memory_cell.mem_map.",)


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A state dict from `.safetensors` or a torch file (`torch.load(weights_only=True)`)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: entry {bad!r} is a {type(sd[bad]).__name__}, not a tensor")
    return {k: v.detach().float().numpy() for k, v in sd.items()}


def merge_peft(sd: dict[str, np.ndarray], lora_alpha: float) -> dict[str, np.ndarray]:
    """Backbone tensors under transformers names with PEFT adapters merged into their weights."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(PEFT):
            continue
        name = k[len(PEFT):]
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = v.copy()
    for k, a in sd.items():
        m = re.match(re.escape(PEFT) + r"(.+)\.lora_(embedding_)?A(?:\.(\w+))?(?:\.weight)?$", k)
        if not m:
            continue
        base, emb, adapter = m.group(1), m.group(2), m.group(3)
        suffix = f".{adapter}" if adapter else ""
        b_key = k.replace(f"lora_{emb or ''}A{suffix}", f"lora_{emb or ''}B{suffix}")
        if b_key not in sd:
            raise CheckpointError(f"LoRA tensor {k!r} has no matching {b_key!r}")
        b = sd[b_key]
        r = a.shape[0]
        delta = (b @ a) * (lora_alpha / r)  # linear: [out, r] @ [r, in]; embedding: [d, r] @ [r, V]
        target = base + ".weight"
        if target not in out:
            raise CheckpointError(f"LoRA adapter {k!r} targets {target!r}, which is not in the "
                                  "state dict")
        out[target] = out[target] + (delta.T if emb else delta)
    return out


def load_hmt_pytorch(state_dict_path, backbone, *, segment_length: int, num_sensory: int = 0,
                     mem_recall_hidden_dim: int = 4096, mem_recall_context: int = 100,
                     sum_fraction: float = 0.5, lora_alpha: float = 32.0,
                     recall_scale: str = "reference", dtype: str = "float32") -> HMT:
    """An `HMT` that reproduces a reference checkpoint.

    `backbone` names the backbone (registry name, path or hub id) for its config and tokenizer;
    its weights come from the state dict. The other arguments are the reference's command-line
    arguments of the same names. Stage 2 when the state dict has the recall weights, else 1.
    `recall_scale="reference"` keeps the reference's 1/d_h score scale for d, d_h >= 4096.
    """
    import h2mt_jax

    sd = read_state_dict(state_dict_path)
    stage = 2 if "cross_attn.wq.weight" in sd else 1
    lm = h2mt_jax.load_lm(backbone, dtype=dtype)
    d = lm.config.hidden_size
    cfg = HMTConfig(segment_length=segment_length, num_sensory=num_sensory,
                    recall_dim=mem_recall_hidden_dim, recall_context=mem_recall_context,
                    sum_fraction=sum_fraction, stage=stage, recall_scale=recall_scale)

    def need(key, shape):
        if key not in sd:
            raise CheckpointError(f"missing tensor {key!r} (expected shape {shape})")
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(f"tensor {key!r} has shape {tuple(sd[key].shape)}, expected {shape}")
        return sd[key]

    params = {"memory": need("memory_cell.memory", (1, d))}
    if stage == 2:
        h = mem_recall_hidden_dim
        params.update(summary=need("mem", (1, d)), w_q=need("cross_attn.wq.weight", (h, d)).T,
                      w_k=need("cross_attn.wk.weight", (h, d)).T)
    else:  # stage 1 never uses them: fixed placeholders keep one parameter layout
        params.update(summary=np.zeros((1, d), np.float32),
                      w_q=np.zeros((d, mem_recall_hidden_dim), np.float32),
                      w_k=np.zeros((d, mem_recall_hidden_dim), np.float32))

    if any(k.startswith(PEFT) for k in sd):
        tensors, prefix = merge_peft(sd, lora_alpha), ""
        backbone_keys = {k for k in sd if k.startswith(PEFT)}
    else:
        tensors, prefix = sd, BACKBONE
        backbone_keys = {k for k in sd if k.startswith(BACKBONE)}
    known = backbone_keys | {"memory_cell.memory", "mem", "cross_attn.wq.weight",
                             "cross_attn.wk.weight"}
    unexpected = sorted(k for k in sd if k not in known and not k.startswith(IGNORED))
    if unexpected:
        raise CheckpointError(f"unexpected tensors in the HMT state dict: {unexpected[:10]}")
    if not backbone_keys:
        raise CheckpointError(f"the state dict has no backbone tensors under {BACKBONE!r}")
    flat = hf_to_flat(lm.config, {k: v for k, v in tensors.items()
                                  if k.startswith(prefix)}, prefix=prefix)
    from flax import nnx

    model = build_model(lm.config, flat, lm.dtype)
    lm.graphdef, lm.params = nnx.split(model)
    return HMT(lm, cfg, {k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
