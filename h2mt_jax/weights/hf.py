"""Hugging Face checkpoints: a local directory (config.json + safetensors) or a hub id."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from h2mt_jax.backbone.config import BackboneConfig


def read_hf_dir(path: str | os.PathLike) -> tuple[BackboneConfig, dict[str, np.ndarray]]:
    """Reads `config.json` and every `*.safetensors` shard of a transformers checkpoint directory.

    Falls back to `pytorch_model*.bin` (read with `torch.load(weights_only=True)`) only when the
    directory has no safetensors.
    """
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} has no config.json; expected a transformers checkpoint "
                                "directory (config.json + *.safetensors)")
    with open(cfg_path) as f:
        cfg = BackboneConfig.from_hf_dict(json.load(f))
    tensors: dict[str, np.ndarray] = {}
    shards = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(shard, framework="np") as f:
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
    else:
        bins = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
        if not bins:
            raise FileNotFoundError(f"{path} has no *.safetensors or pytorch_model*.bin weights")
        import torch

        for b in bins:
            for k, v in torch.load(b, map_location="cpu", weights_only=True).items():
                tensors[k] = v.float().numpy()
    return cfg, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def download_hub(repo_id: str, revision: str = "main") -> tuple[str, str | None]:
    """Downloads a hub checkpoint's config, tokenizer and safetensors at `revision` (a branch,
    tag or commit); returns the local dir and the commit it holds (the snapshot's name in the
    hub cache), so that a load by branch name records what it got."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(repo_id, revision=revision, allow_patterns=[
        "*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    commit = os.path.basename(os.path.normpath(path))
    return path, commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None
