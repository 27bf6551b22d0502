"""GGUF files: architecture metadata -> `BackboneConfig`, tensors -> transformers-named arrays.

Quantized tensors (Q4_0/Q4_1/Q8_0/K-quants...) are dequantized to float32 by the `gguf` package.
llama.cpp's converter permutes the rows of Q and K for the `llama` architecture (its RoPE pairs
adjacent dimensions, transformers' pairs the two halves); `unpermute_rows` undoes that.
"""

from __future__ import annotations

import os

import numpy as np

from h2mt_jax.backbone.config import SUPPORTED_MODEL_TYPES, BackboneConfig, UnsupportedModelError
from h2mt_jax.weights.convert import CheckpointError

# GGUF tensor name (after "blk.N.") -> transformers name (after "model.layers.N.").
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
              "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: per head, interleaved pairs -> two halves."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path: str | os.PathLike):
    """A `gguf.GGUFReader` over `path`; a damaged or truncated file is a `CheckpointError` naming it."""
    from gguf import GGUFReader

    path = os.fspath(path)
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError,
            EOFError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: "
                              f"{str(e)[:200]}); is it truncated or another format?") from e


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def read_config(reader) -> BackboneConfig:
    """The backbone config from a `gguf.GGUFReader`'s metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    path = getattr(reader, "data", None)
    path = getattr(path, "filename", "GGUF file")

    def a(key, default=None, required=False, positive=False):
        value = _field(reader, f"{arch}.{key}", default)
        if value is None and required:
            raise CheckpointError(f"{path}: metadata field {arch}.{key} is missing")
        if positive and value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise CheckpointError(f"{path}: metadata field {arch}.{key} = {value!r} must be positive")
        return value

    d = int(a("embedding_length", required=True, positive=True))
    heads = int(a("attention.head_count", required=True, positive=True))
    for key in ("feed_forward_length", "block_count"):
        a(key, required=True, positive=True)
    names = {t.name for t in reader.tensors}
    vocab = a("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    freq_factors = None
    if "rope_freqs.weight" in names:
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        freq_factors = tuple(float(x) for x in np.asarray(t.data, np.float32).ravel())
    return BackboneConfig(
        vocab_size=int(vocab), hidden_size=d, intermediate_size=int(a("feed_forward_length")),
        num_layers=int(a("block_count")), num_heads=heads,
        num_kv_heads=int(a("attention.head_count_kv", heads)),
        head_dim=int(a("attention.key_length", d // heads)),
        max_position_embeddings=int(a("context_length", 2048)),
        rms_norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(a("rope.freq_base", 10000.0)), rope_freq_factors=freq_factors,
        attention_bias="blk.0.attn_q.bias" in names,
        tie_word_embeddings="output.weight" not in names, model_type=arch,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"))


def read_gguf(path: str | os.PathLike, progress: bool = True) -> tuple[BackboneConfig, dict[str, np.ndarray]]:
    """Reads a GGUF file: its config and its tensors under transformers names, as float32."""
    from gguf.quants import dequantize
    from tqdm.auto import tqdm

    reader = open_gguf(path)
    cfg = read_config(reader)
    tensors: dict[str, np.ndarray] = {}
    for t in tqdm(reader.tensors, desc="dequantizing GGUF", disable=not progress, leave=False):
        if t.name == "rope_freqs.weight":
            continue
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        else:
            parts = t.name.split(".", 2)
            if len(parts) != 3 or parts[0] != "blk" or parts[2] not in _LAYER_NAMES:
                raise UnsupportedModelError(f"GGUF tensor {t.name!r} has no place in a "
                                            f"{cfg.model_type} backbone")
            name = f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if cfg.model_type == "llama" and ("attn_q." in t.name or "attn_k." in t.name):
            arr = unpermute_rows(arr, cfg.num_heads if "attn_q." in t.name else cfg.num_kv_heads)
        tensors[name] = arr
    return cfg, tensors
