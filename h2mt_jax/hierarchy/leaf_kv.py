"""Per-leaf KV caches stored in an index: what the `leaf_kv` and `memory_kv` answers read.

For every leaf, the leaf pass that writes its memory also yields each layer's keys (before RoPE)
and values of its `m` write tokens; the leaf's own tokens' keys and values come from the answer
backbone run over the chat preamble then the leaf (`H2MTConfig.kv_prefix`; `prefix_tokens`
records how many preamble tokens), as a text prompt computes them up to the other leaves
(`memory.leaf_memories(..., with_kv=True)`). The `memory` reading's slots get theirs too
(`slot_k`, `slot_v`): each leaf's memories read by the answer backbone after the same preamble
(`memory.memory_slot_kv`), so that a `memory` answer prefills only the question. They are kept as
- `bfloat16` (2 bytes a value; the default),
- `int8` with one float32 scale per (token, layer, kv head): `x ≈ q · scale`, `scale =
  max|x| / 127` over the head dimension (about half the size; see `tests/test_leaf_kv.py` for the
  measured error), or
- `float32` (exact: what the equality tests use).
Leaf tokens are concatenated in leaf order (`lengths` gives each leaf's count); on disk they are
`.npy` files loaded memory-mapped, so an answer reads only the selected leaves' rows.
Sizes: SmolLM2-135M (30 layers, 3 kv heads of 64) stores 23 KB per token in bfloat16; the write
tokens and the slots add 2 x m such rows per leaf (bfloat16, also under `int8`).
"""

from __future__ import annotations

import dataclasses
import os

import ml_dtypes
import numpy as np

from h2mt_jax.io import atomic_write, check_shapes

KV_DTYPES = ("bfloat16", "int8", "float32")
_FILES = ("k", "v", "k_scale", "v_scale", "write_k", "write_v", "slot_k", "slot_v")


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16))


def _from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits).view(ml_dtypes.bfloat16).astype(np.float32)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[..., dh]` float -> (int8 `[..., dh]`, float32 scales `[...]`), symmetric per row."""
    x = np.asarray(x, np.float32)
    scale = np.abs(x).max(-1) / 127.0
    q = np.rint(x / np.where(scale > 0, scale, 1.0)[..., None])
    return np.clip(q, -127, 127).astype(np.int8), scale.astype(np.float32)


@dataclasses.dataclass
class LeafKV:
    """Stored keys/values of an index's leaves. `k`, `v`: `[tokens, layers, kv_heads, head_dim]`
    (uint16 bfloat16 bits, or int8 with `k_scale`/`v_scale` `[tokens, layers, kv_heads]`);
    `write_k`, `write_v`: `[leaves, layers, m, kv_heads, head_dim]` bfloat16 bits; `slot_k`,
    `slot_v`: the same shape, the `memory` reading's slots (None in an index saved before them:
    its `memory` answers prefill the slots); `lengths`:
    tokens per leaf; `backbone`: the name of the model that computed them; `prefix_tokens`: how
    many tokens each leaf's own keys/values were computed after (`H2MTConfig.kv_prefix`)."""

    dtype: str
    lengths: np.ndarray
    k: np.ndarray
    v: np.ndarray
    write_k: np.ndarray
    write_v: np.ndarray
    k_scale: np.ndarray | None = None
    v_scale: np.ndarray | None = None
    slot_k: np.ndarray | None = None
    slot_v: np.ndarray | None = None
    backbone: str = ""
    prefix_tokens: int = 0

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_pass(cls, kv, dtype: str, backbone: str, prefix_tokens: int = 0,
                  slots: tuple[np.ndarray, np.ndarray] | None = None) -> "LeafKV":
        """From a `memory.LeafPassKV` (per-leaf float32 `[layers, t, kh, dh]` arrays) and the
        slots' keys and values `[leaves, layers, m, kh, dh]` (`memory.memory_slot_kv`)."""
        if dtype not in KV_DTYPES:
            raise ValueError(f"kv_store must be one of {KV_DTYPES} (or 'none'), got {dtype!r}")
        lengths = np.asarray([k.shape[1] for k in kv.leaf_k], np.int64)
        k = np.concatenate([a.transpose(1, 0, 2, 3) for a in kv.leaf_k])
        v = np.concatenate([a.transpose(1, 0, 2, 3) for a in kv.leaf_v])
        wk, wv = np.stack(kv.write_k), np.stack(kv.write_v)  # [leaves, layers, m, kh, dh]
        exact = dtype == "float32"
        store = (lambda x: np.asarray(x, np.float32)) if exact else _bf16_bits  # noqa: E731
        out = cls(dtype, lengths, k, v, store(wk), store(wv), backbone=backbone,
                  prefix_tokens=prefix_tokens)
        if slots is not None:
            if slots[0].shape != wk.shape:
                raise ValueError(f"slot keys of shape {slots[0].shape} do not match the write "
                                 f"tokens' {wk.shape}")
            out.slot_k, out.slot_v = store(slots[0]), store(slots[1])
        if dtype == "int8":
            out.k, out.k_scale = quantize_int8(k)
            out.v, out.v_scale = quantize_int8(v)
        else:
            out.k, out.v = store(k), store(v)
        return out

    @classmethod
    def concat(cls, a: "LeafKV", b: "LeafKV") -> "LeafKV":
        """`a`'s leaves then `b`'s (incremental `append`); same dtype, backbone and prefix."""
        if (a.dtype, a.backbone, a.prefix_tokens) != (b.dtype, b.backbone, b.prefix_tokens):
            raise ValueError(f"cannot join leaf KV of {a.dtype}/{a.backbone!r} after "
                             f"{a.prefix_tokens} prefix tokens and {b.dtype}/{b.backbone!r} after "
                             f"{b.prefix_tokens}")
        cat = lambda x, y: None if x is None or y is None else np.concatenate([x, y])  # noqa
        return cls(a.dtype, np.concatenate([a.lengths, b.lengths]), cat(a.k, b.k),
                   cat(a.v, b.v), cat(a.write_k, b.write_k), cat(a.write_v, b.write_v),
                   cat(a.k_scale, b.k_scale), cat(a.v_scale, b.v_scale),
                   cat(a.slot_k, b.slot_k), cat(a.slot_v, b.slot_v), a.backbone,
                   a.prefix_tokens)

    # -- reading -----------------------------------------------------------------------------
    @property
    def n_leaves(self) -> int:
        return len(self.lengths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(layers, kv_heads, head_dim)."""
        return tuple(int(x) for x in self.k.shape[1:])

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, f).nbytes) for f in _FILES if getattr(self, f) is not None)

    def _rows(self, leaves) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(self.lengths)])
        return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in leaves]
                              or [np.zeros(0, np.int64)])

    def _float(self, data) -> np.ndarray:
        return np.asarray(data, np.float32) if self.dtype == "float32" else _from_bf16_bits(data)

    def _decode(self, data, scale, rows) -> np.ndarray:
        if self.dtype == "int8":
            return data[rows].astype(np.float32) * scale[rows][..., None]
        return self._float(data[rows])

    def gather(self, leaves: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The leaves' tokens' keys and values, in the given order, as float32
        `[layers, tokens, kv_heads, head_dim]` (only their rows are read from disk)."""
        rows = self._rows(leaves)
        k = self._decode(self.k, self.k_scale, rows)
        v = self._decode(self.v, self.v_scale, rows)
        return k.transpose(1, 0, 2, 3), v.transpose(1, 0, 2, 3)

    def gather_write(self, leaves: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The leaves' write tokens' keys and values, `[layers, len(leaves) * m, kh, dh]`."""
        return self._per_leaf(self.write_k, leaves), self._per_leaf(self.write_v, leaves)

    @property
    def has_slots(self) -> bool:
        """Whether the `memory` reading's slot keys/values are stored (`gather_slots`)."""
        return self.slot_k is not None and self.slot_v is not None

    def gather_slots(self, leaves: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The leaves' memory slots' keys and values as the answer backbone reads them,
        `[layers, len(leaves) * m, kh, dh]`, in the given order."""
        if not self.has_slots:
            raise ValueError("this index stores no memory slot keys/values (saved before "
                             "they existed): rebuild it, or answer by prefilling the slots")
        return self._per_leaf(self.slot_k, leaves), self._per_leaf(self.slot_v, leaves)

    def _per_leaf(self, bits, leaves) -> np.ndarray:
        x = self._float(bits[list(leaves)])  # [n, layers, m, kh, dh]
        return x.transpose(1, 0, 2, 3, 4).reshape(x.shape[1], -1, *x.shape[3:])

    # -- files -------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"dtype": self.dtype, "lengths": [int(x) for x in self.lengths],
                "backbone": self.backbone, "shape": list(self.shape),
                "write_tokens": int(self.write_k.shape[2]), "prefix_tokens": self.prefix_tokens,
                "slots": self.has_slots}

    def save(self, directory) -> None:
        """One `.npy` per array under `directory/kv/`, each written atomically."""
        for name in _FILES:
            arr = getattr(self, name)
            if arr is not None:
                atomic_write(os.path.join(directory, "kv", f"{name}.npy"),
                             lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))

    @classmethod
    def load(cls, directory, meta: dict) -> "LeafKV":
        """Memory-mapped arrays of `save`, checked against `meta` (which field is wrong)."""
        arrays = {}
        for name in _FILES:
            path = os.path.join(directory, "kv", f"{name}.npy")
            if os.path.isfile(path):
                arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
        lengths = np.asarray(meta["lengths"], np.int64)
        layers, kh, dh = meta["shape"]
        total, n = int(lengths.sum()), len(lengths)
        expect = {"k": (total, layers, kh, dh), "v": (total, layers, kh, dh),
                  "write_k": (n, layers, meta["write_tokens"], kh, dh),
                  "write_v": (n, layers, meta["write_tokens"], kh, dh)}
        if meta.get("slots"):  # indexes saved before the slots' keys/values have none
            expect.update(slot_k=expect["write_k"], slot_v=expect["write_v"])
        if meta["dtype"] == "int8":
            expect.update(k_scale=(total, layers, kh), v_scale=(total, layers, kh))
        check_shapes({f"{k}.npy": a for k, a in arrays.items()},
                     {f"{k}.npy": s for k, s in expect.items()}, str(directory), "kv/")
        if not meta.get("slots"):
            arrays.pop("slot_k", None)
            arrays.pop("slot_v", None)
        return cls(meta["dtype"], lengths, backbone=meta.get("backbone", ""),
                   prefix_tokens=int(meta.get("prefix_tokens", 0)),
                   **{k: arrays.get(k) for k in _FILES})
