"""HMT checkpoints: `hmt.safetensors` (memory params, LoRA) + `hmt.json` (format, config, backbone).

Only files: building the `HMT` from what is read here is `HMT.load` (h2mt_jax/hmt/model.py), so
this module knows no model class. Written through `h2mt_jax.io` (atomic, "::"-separated keys).
"""

from __future__ import annotations

import os

from h2mt_jax.hmt.config import HMTConfig
from h2mt_jax.io import load_tree, read_meta, save_tree, write_meta

FORMAT = "h2mt_jax.hmt/1"
TENSORS, META = "hmt.safetensors", "hmt.json"


def save_hmt(hmt, directory) -> None:
    """Writes the memory parameters, adapters and config of `hmt` (anything with `params`,
    `lora`, `lora_scale`, `config` and `lm`); the backbone is referenced by name."""
    tree = {"params": hmt.params, **({"lora": hmt.lora} if hmt.lora else {})}
    save_tree(os.path.join(directory, TENSORS), tree)
    write_meta(os.path.join(directory, META), FORMAT, config=hmt.config.to_dict(),
               backbone=hmt.lm.name, backbone_hidden_size=hmt.lm.config.hidden_size,
               lora_scale=hmt.lora_scale)


def load_hmt_state(directory) -> tuple[HMTConfig, dict, dict]:
    """(config, {"params": ..., "lora"?: ...} as numpy arrays, metadata) of a checkpoint written
    by `save_hmt`. FileNotFoundError without `hmt.json` ("not an HMT checkpoint"),
    `h2mt_jax.io.FormatError` (a ValueError) for another format."""
    meta = read_meta(os.path.join(directory, META), FORMAT, "an HMT checkpoint")
    tree = load_tree(os.path.join(directory, TENSORS))
    return HMTConfig(**meta["config"]), tree, meta


def check_backbone(meta: dict, hidden_size: int) -> None:
    """ValueError unless the checkpoint was trained on a backbone of this hidden size."""
    if hidden_size != meta["backbone_hidden_size"]:
        raise ValueError(f"checkpoint was trained on a backbone with d={meta['backbone_hidden_size']}"
                         f", this backbone has d={hidden_size}")
