"""Writes tiny GGUF files from transformers checkpoints, the way llama.cpp's converter does."""

from __future__ import annotations

import json

import gguf
import numpy as np
from safetensors.numpy import load_file



def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Q/K rows as llama.cpp's convert_hf_to_gguf.py writes them (its `permute`, restated here
    from its documented formula, independently of the library's inverse)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))

_LAYER = {"input_layernorm.weight": "attn_norm.weight",
          "post_attention_layernorm.weight": "ffn_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
          "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
          "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
          "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
          "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(hf_dir, out_path, arch: str | None = None, quant=None, drop: str | None = None,
               set: tuple[str, int] | None = None,  # noqa: A002
               extra_tensors: dict | None = None) -> None:
    """`drop`: leave out one `{arch}.*` metadata field; `set`: (field, value) to write instead;
    `extra_tensors`: more tensors by GGUF name (e.g. `rope_freqs.weight`)."""
    cfg = json.load(open(hf_dir / "config.json"))
    arch = arch or cfg["model_type"]
    tensors = load_file(str(hf_dir / "model.safetensors"))
    w = gguf.GGUFWriter(str(out_path), arch)
    fields = {"block_count": cfg["num_hidden_layers"], "embedding_length": cfg["hidden_size"],
              "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": cfg["num_attention_heads"],
              "attention.head_count_kv": cfg["num_key_value_heads"],
              "rope.freq_base": float(cfg.get("rope_theta", 10000.0)),
              "attention.layer_norm_rms_epsilon": float(cfg["rms_norm_eps"]),
              "context_length": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"]}
    if set is not None:
        fields[set[0].removeprefix(f"{arch}.")] = set[1]
    for key, value in fields.items():
        if drop == f"{arch}.{key}":
            continue
        if isinstance(value, float):
            w.add_float32(f"{arch}.{key}", value)
        else:
            w.add_uint32(f"{arch}.{key}", int(value))
    for name, arr in tensors.items():
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            i, rest = name[len("model.layers."):].split(".", 1)
            g = f"blk.{i}.{_LAYER[rest]}"
        if arch == "llama" and (".attn_q." in g or ".attn_k." in g):
            heads = cfg["num_attention_heads"] if ".attn_q." in g else cfg["num_key_value_heads"]
            arr = llama_cpp_permute(arr, heads)
        arr = np.ascontiguousarray(arr, np.float32)
        if quant is not None and arr.ndim == 2:
            w.add_tensor(g, gguf.quants.quantize(arr, quant), raw_dtype=quant)
        else:
            w.add_tensor(g, arr)
    for name, arr in (extra_tensors or {}).items():
        w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
