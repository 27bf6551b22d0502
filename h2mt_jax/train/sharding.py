"""Device mesh, logical axis rules and shardings (one table maps names to mesh axes).

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters sharded
along `embed`), `tensor` (heads / MLP / vocabulary split). Parameters get logical axes from
their names; `RULES` maps logical axes to mesh axes; a dimension that the mesh axis does not
divide stays replicated. Small memory parameters are replicated; batches are split over
`(data, fsdp)`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from h2mt_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "length": None,
}

# Backbone parameter name (last two path parts) -> logical axes of its dimensions.
PARAM_AXES = {
    ("embedding",): ("vocab", "embed"),
    ("qkv", "kernel"): ("embed", "heads"), ("qkv", "bias"): ("heads",),
    ("o", "kernel"): ("heads", "embed"),
    ("gate_up", "kernel"): ("embed", "mlp"), ("down", "kernel"): ("mlp", "embed"),
    ("lm_head", "kernel"): ("embed", "vocab"),
}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh; `-1` in one axis takes the remaining devices."""
    devices = jax.devices() if devices is None else devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
            f"{len(devices)} are available (to try a mesh on one CPU, simulate devices: "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={int(np.prod(sizes))} python ...)")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_spec(axes, shape, mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for logical `axes` of an array of `shape` (replicate what does not divide)."""
    parts = []
    for name, dim in zip(axes, shape):
        target = RULES.get(name) if name else None
        if target is not None:
            names = target if isinstance(target, tuple) else (target,)
            size = int(np.prod([mesh.shape[n] for n in names]))
            if dim % size:
                target = None
        parts.append(target)
    return PartitionSpec(*parts)


def _param_axes(path) -> tuple[str | None, ...] | None:
    keys = tuple(str(p) for p in path)
    for n in (2, 1):
        if keys[-n:] in PARAM_AXES:
            return PARAM_AXES[keys[-n:]]
    return None


def param_shardings(params, mesh: Mesh):
    """NamedShardings for a backbone `nnx.State` (or any pytree: unknown leaves replicate)."""
    def one(path, leaf):
        keys = tuple(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p))) for p in path)
        keys = tuple(k for k in keys if k != "value")
        axes = _param_axes(keys)
        shape = np.shape(leaf)
        spec = logical_spec(axes, shape, mesh) if axes and len(axes) == len(shape) else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, params)


def replicated(tree, mesh: Mesh):
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def batch_shardings(batch, mesh: Mesh):
    """Leading (batch) dimension over `(data, fsdp)`; scalars per example too."""
    def one(leaf):
        shape = np.shape(leaf)
        return NamedSharding(mesh, logical_spec(("batch",) + (None,) * (len(shape) - 1), shape,
                                                mesh))

    return jax.tree.map(one, batch)


def initialize_distributed(enabled: bool) -> None:
    """`jax.distributed.initialize()` for multi-host runs (TPU pods find the coordinator from
    the runtime). Call before any other JAX work."""
    if enabled:
        jax.distributed.initialize()
