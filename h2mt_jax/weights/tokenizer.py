"""Tokenizers from a GGUF file's own metadata, without PyTorch.

transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)` reads the file through a reader
that imports torch, which is a test dependency here, not a runtime one. This module reads the same
metadata (vocabulary, merges, token types, special tokens, chat template) with the `gguf` package and
hands it to transformers' own GGUF tokenizer converter (which needs only `tokenizers`), so the
result is token-for-token the tokenizer transformers builds (`tests/test_tokenizer.py` checks it).
The caller caches the result as `tokenizer.json` + `tokenizer_config.json`.
"""

from __future__ import annotations

import os

from h2mt_jax.weights.convert import CheckpointError
from h2mt_jax.weights.gguf import open_gguf


def gguf_tokenizer_fields(reader, path: str = "") -> tuple[str, dict, dict]:
    """`(architecture, tokenizer_dict, tokenizer_config)` as transformers' GGUF loader names them."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS, GGUF_TOKENIZER_MAPPING)

    def field(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    architecture = field("general.architecture")
    if architecture is None or field("tokenizer.ggml.tokens") is None:
        raise CheckpointError(f"{path}: GGUF file without tokenizer metadata "
                              "(general.architecture / tokenizer.ggml.tokens)")
    grouped = {group: {name: v for key, name in renames.items()
                       if (v := field(f"tokenizer.{key}")) is not None}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tok, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tok.get("tokenizer_type") == "llama":  # as transformers: llama.cpp adds BOS by default
        config.setdefault("add_bos_token", True)
    elif tok.get("tokenizer_type") == "gemma4":
        config["add_bos_token"] = False
    n = len(tok["tokens"])
    for name, key in _SPECIAL_TOKENS.items():
        token_id = field(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= int(token_id) < n:
            raise CheckpointError(f"{path}: tokenizer.ggml.{key} = {token_id} is outside the "
                                  f"vocabulary of {n} tokens")
        config[name] = tok["tokens"][int(token_id)] if token_id is not None else None
    return architecture, tok, config


def tokenizer_from_gguf(path: str | os.PathLike, reader=None):
    """The transformers fast tokenizer (chat template and special tokens included) of a GGUF file."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    path = os.fspath(path)
    reader = open_gguf(path) if reader is None else reader
    architecture, tok, config = gguf_tokenizer_fields(reader, path)
    try:
        backend, extra = convert_gguf_tokenizer(architecture, tok)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot build its tokenizer ({e})") from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
