"""Saving and loading HMT checkpoints: `hmt.safetensors` (memory params, LoRA) + `hmt.json`."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

FORMAT = "h2mt_jax.hmt/1"


def _flatten(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "::"))
        else:
            out[key] = np.asarray(v, np.float32)
    return out


def _unflatten(flat):
    tree: dict = {}
    for key, v in flat.items():
        parts = key.split("::")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return tree


def save_hmt(hmt, directory) -> None:
    """Writes the memory parameters, adapters and config; the backbone is referenced by name."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = _flatten({"params": hmt.params, **({"lora": hmt.lora} if hmt.lora else {})})
    meta = {"format": FORMAT, "config": hmt.config.to_dict(), "backbone": hmt.lm.name,
            "backbone_hidden_size": hmt.lm.config.hidden_size, "lora_scale": hmt.lora_scale}
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp)
    os.replace(tmp, os.path.join(directory, "hmt.safetensors"))
    with open(os.path.join(directory, "hmt.json"), "w") as f:
        json.dump(meta, f, indent=1)


def load_hmt(directory, lm=None):
    """Loads a checkpoint written by `save_hmt` (the backbone by its saved name unless given)."""
    import jax.numpy as jnp
    from safetensors.numpy import load_file

    import h2mt_jax
    from h2mt_jax.hmt.config import HMTConfig
    from h2mt_jax.hmt.model import HMT

    meta_path = os.path.join(directory, "hmt.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"{directory} has no hmt.json: not an HMT checkpoint")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    lm = lm or h2mt_jax.load_lm(meta["backbone"])
    if lm.config.hidden_size != meta["backbone_hidden_size"]:
        raise ValueError(f"checkpoint was trained on a backbone with d={meta['backbone_hidden_size']}"
                         f", this backbone has d={lm.config.hidden_size}")
    tree = _unflatten(load_file(os.path.join(directory, "hmt.safetensors")))
    to_jnp = lambda t: {k: (to_jnp(v) if isinstance(v, dict) else jnp.asarray(v))  # noqa: E731
                        for k, v in t.items()}
    tree = to_jnp(tree)
    return HMT(lm, HMTConfig(**meta["config"]), tree["params"], tree.get("lora"),
               meta.get("lora_scale", 1.0))
