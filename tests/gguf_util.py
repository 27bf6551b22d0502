"""Writes tiny GGUF files from transformers checkpoints, the way llama.cpp's converter does."""

from __future__ import annotations

import json

import gguf
import numpy as np
from safetensors.numpy import load_file

from h2mt_jax.weights.gguf import permute_rows

_LAYER = {"input_layernorm.weight": "attn_norm.weight",
          "post_attention_layernorm.weight": "ffn_norm.weight",
          "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
          "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
          "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
          "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
          "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(hf_dir, out_path, arch: str | None = None, quant=None) -> None:
    cfg = json.load(open(hf_dir / "config.json"))
    arch = arch or cfg["model_type"]
    tensors = load_file(str(hf_dir / "model.safetensors"))
    w = gguf.GGUFWriter(str(out_path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_vocab_size(cfg["vocab_size"])
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
            arr = permute_rows(arr, heads)
        arr = np.ascontiguousarray(arr, np.float32)
        if quant is not None and arr.ndim == 2:
            w.add_tensor(g, gguf.quants.quantize(arr, quant), raw_dtype=quant)
        else:
            w.add_tensor(g, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
