"""Maps checkpoint tensors (transformers names, `[out, in]` matrices) onto the Flax backbone.

One function, `hf_to_flat`, turns a transformers state dict into the backbone's flat parameter
dict (`"layers/3/attn/qkv/kernel"` -> array), fusing q/k/v and gate/up and transposing to
`[in, out]`. `build_model` checks names and shapes against the abstract model and assembles it.
Every mismatch is reported by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.backbone.config import BackboneConfig
from h2mt_jax.backbone.model import Llama

# Checkpoint tensors that carry no parameters of ours (recomputed or unused).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint's tensor names or shapes do not match the model."""


def _expect(tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise CheckpointError(f"missing tensor {name!r} (expected shape {shape})")
    arr = np.asarray(tensors[name])
    if tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
    return arr


def hf_to_flat(cfg: BackboneConfig, tensors: Mapping[str, np.ndarray],
               prefix: str = "") -> dict[str, np.ndarray]:
    """transformers names (optionally under `prefix`) -> the backbone's flat parameter dict.

    Raises `CheckpointError` naming the first missing, misshapen or unexpected tensor.
    """
    d, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.q_dim, cfg.kv_dim
    used: set[str] = set()

    def get(name, shape):
        used.add(prefix + name)
        return _expect(tensors, prefix + name, shape)

    flat = {"embedding": get("model.embed_tokens.weight", (cfg.vocab_size, d)),
            "norm/scale": get("model.norm.weight", (d,))}
    if not cfg.tie_word_embeddings:
        flat["lm_head/kernel"] = get("lm_head.weight", (cfg.vocab_size, d)).T
    elif prefix + "lm_head.weight" in tensors:  # tied checkpoints may still store the copy
        used.add(prefix + "lm_head.weight")
    for i in range(cfg.num_layers):
        p, o = f"model.layers.{i}.", f"layers/{i}/"
        wq = get(p + "self_attn.q_proj.weight", (q, d))
        wk = get(p + "self_attn.k_proj.weight", (kv, d))
        wv = get(p + "self_attn.v_proj.weight", (kv, d))
        flat[o + "attn/qkv/kernel"] = np.concatenate([wq, wk, wv], axis=0).T
        if cfg.attention_bias:
            flat[o + "attn/qkv/bias"] = np.concatenate([
                get(p + "self_attn.q_proj.bias", (q,)), get(p + "self_attn.k_proj.bias", (kv,)),
                get(p + "self_attn.v_proj.bias", (kv,))])
        flat[o + "attn/o/kernel"] = get(p + "self_attn.o_proj.weight", (d, q)).T
        flat[o + "mlp/gate_up/kernel"] = np.concatenate([
            get(p + "mlp.gate_proj.weight", (f, d)), get(p + "mlp.up_proj.weight", (f, d))], 0).T
        flat[o + "mlp/down/kernel"] = get(p + "mlp.down_proj.weight", (d, f)).T
        flat[o + "attn_norm/scale"] = get(p + "input_layernorm.weight", (d,))
        flat[o + "mlp_norm/scale"] = get(p + "post_attention_layernorm.weight", (d,))
    unexpected = sorted(k for k in tensors if k.startswith(prefix) and k not in used
                        and not k.endswith(IGNORED_SUFFIXES))
    if unexpected:
        raise CheckpointError(f"unexpected tensors in checkpoint: {unexpected[:10]}"
                              + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    return {k: np.ascontiguousarray(v) for k, v in flat.items()}


def abstract_model(cfg: BackboneConfig, dtype=jnp.float32) -> Llama:
    """The model with shapes only (no memory allocated)."""
    return nnx.eval_shape(lambda: Llama(cfg, dtype=dtype, rngs=nnx.Rngs(0)))


def _path_key(path) -> str:
    return "/".join(str(p) for p in path)


def build_model(cfg: BackboneConfig, flat: Mapping[str, np.ndarray], dtype=jnp.float32) -> Llama:
    """Assembles a `Llama` from a flat parameter dict, checking every name and shape."""
    graphdef, abstract = nnx.split(abstract_model(cfg, dtype))
    expected = {_path_key(path): v for path, v in nnx.to_flat_state(abstract)}
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(f"parameter names do not match the model: missing {missing[:10]}, "
                              f"unexpected {extra[:10]}")
    leaves = []
    for path, var in nnx.to_flat_state(abstract):
        key = _path_key(path)
        arr = flat[key]
        if tuple(arr.shape) != tuple(var.shape):
            raise CheckpointError(f"parameter {key!r} has shape {tuple(arr.shape)}, "
                                  f"expected {tuple(var.shape)}")
        leaves.append((path, var.replace(jnp.asarray(arr, dtype=dtype))))
    state = nnx.from_flat_state(leaves)
    return nnx.merge(graphdef, state)


def model_to_flat(model: Llama) -> dict[str, np.ndarray]:
    """The inverse of `build_model`: a flat dict of host arrays."""
    return {_path_key(path): np.asarray(jax.device_get(v[...]))
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
