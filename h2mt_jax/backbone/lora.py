"""Low-rank adapters on the backbone's dense kernels, applied by merging.

`init_lora` makes a pytree `{"layers/3/attn/qkv/kernel": {"a": [in, r], "b": [r, out]}, ...}`;
`merge_lora(params, lora, scale)` returns backbone params with `kernel + scale * a @ b`. Merging
inside the jitted step keeps the backbone code unaware of adapters and lets gradients reach `a`
and `b` through the merge; `b` starts at zero, so a fresh adapter leaves the model unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from h2mt_jax.typing import PyTree

DEFAULT_TARGETS = ("qkv", "o", "gate_up", "down")


def _path(path) -> str:
    return "/".join(str(p) for p in path)


def init_lora(params: nnx.State, rank: int, key: jax.Array,
              targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, dict[str, jax.Array]]:
    """Adapters for every `.../<target>/kernel` of the backbone (`a` ~ N(0, 1/in), `b` = 0)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    lora = {}
    for path, var in nnx.to_flat_state(params):
        if len(path) >= 2 and path[-1] == "kernel" and path[-2] in targets:
            din, dout = var.shape
            key, sub = jax.random.split(key)
            lora[_path(path)] = {
                "a": jax.random.normal(sub, (din, rank), jnp.float32) / jnp.sqrt(din),
                "b": jnp.zeros((rank, dout), jnp.float32)}
    if not lora:
        raise ValueError(f"no backbone kernel matches the LoRA targets {targets}")
    return lora


def merge_lora(params: nnx.State, lora: PyTree | None, scale: float = 1.0) -> nnx.State:
    """Backbone params with the adapters added to their kernels (identity when `lora` is None)."""
    if not lora:
        return params
    leaves = []
    for path, var in nnx.to_flat_state(params):
        ad = lora.get(_path(path))
        if ad is not None:
            w = var[...]
            var = var.replace((w + scale * (ad["a"] @ ad["b"])).astype(w.dtype))
        leaves.append((path, var))
    return nnx.from_flat_state(leaves)


def check_lora(lora: PyTree | None, params: nnx.State, where: str) -> None:
    """Raises ValueError naming the first adapter whose kernel is missing from `params` or
    whose `a` `[in, r]` / `b` `[r, out]` do not fit that kernel (`where`: the file, for the
    message)."""
    if not lora:
        return
    kernels = {_path(p): v.shape for p, v in nnx.to_flat_state(params)}
    for key, ad in lora.items():
        if key not in kernels:
            raise ValueError(f"{where}: adapter {key!r} has no kernel in this backbone")
        din, dout = kernels[key]
        a, b = tuple(ad["a"].shape), tuple(ad["b"].shape)
        if len(a) != 2 or len(b) != 2 or a[0] != din or b[1] != dout or a[1] != b[0]:
            raise ValueError(f"{where}: adapter {key!r} has a{a} b{b}, which do not fit the "
                             f"backbone's kernel of shape {(din, dout)}")
