"""Loading backbone weights and tokenizers from names, directories, GGUF files or the hub."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from h2mt_jax.backbone.config import BackboneConfig
from h2mt_jax.weights import cache
from h2mt_jax.weights.convert import CheckpointError, build_model, hf_to_flat
from h2mt_jax.weights.registry import KNOWN_MODELS, ModelNotFoundError, Source, resolve
from h2mt_jax.weights.tokenizer import tokenizer_from_gguf

__all__ = ["CheckpointError", "KNOWN_MODELS", "ModelNotFoundError", "Source", "build_model",
           "load_tokenizer", "load_weights", "resolve"]


def load_weights(source: Source, use_cache: bool = True
                 ) -> tuple[BackboneConfig, dict[str, np.ndarray]]:
    """(config, flat float32 params) for a resolved source; GGUF conversions are cached on disk."""
    key = cache.source_key(source.path) if use_cache else None
    if key is not None and (hit := cache.load(key)) is not None:
        return hit
    if source.kind == "gguf":
        from h2mt_jax.weights.gguf import read_gguf

        cfg, tensors = read_gguf(source.path)
    else:
        from h2mt_jax.weights.hf import read_hf_dir

        cfg, tensors = read_hf_dir(source.path)
    flat = hf_to_flat(cfg, tensors)
    if key is not None and source.kind == "gguf":  # safetensors dirs already load fast
        cache.save(key, cfg, flat)
    return cfg, flat


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(source: Source):
    """The transformers tokenizer (with its chat template) of a source; GGUF ones are cached.

    A GGUF's tokenizer is built from the file's own metadata without PyTorch
    (`weights.tokenizer`) and cached as `tokenizer.json` + `tokenizer_config.json` next to the
    dequantized weights, so the second load reads two small files. None for a checkpoint directory
    without tokenizer files."""
    import transformers

    if source.kind == "hf_dir":
        if not any(os.path.isfile(os.path.join(source.path, f)) for f in TOKENIZER_FILES):
            return None  # weights-only checkpoint (e.g. a test model); ids still work
        return transformers.AutoTokenizer.from_pretrained(source.path)
    cached = cache.tokenizer_dir(cache.source_key(source.path))
    if os.path.isfile(os.path.join(cached, "tokenizer_config.json")):
        try:
            return transformers.AutoTokenizer.from_pretrained(cached)
        except Exception:  # a damaged entry is rebuilt, never trusted
            shutil.rmtree(cached, ignore_errors=True)
    tok = tokenizer_from_gguf(source.path)
    tmp = None
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cached), prefix=".tmp-tok-")
        tok.save_pretrained(tmp)
        os.replace(tmp, cached)
    except OSError:  # read-only or full disk, or another process won the race: not fatal
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return tok
