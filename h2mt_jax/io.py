"""Files: atomic writes, safetensors pytree save/load, and versioned JSON metadata.

Every file the library writes (checkpoints, indexes, evaluation outputs) goes through here, so an
interrupted write never leaves a half file, outputs get the usual permissions (0666 less the
umask, not the 0600 of a temporary file), and a metadata file of another format is refused with
the path and both versions in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np


SEP = "::"  # nesting separator of safetensors keys


class FormatError(ValueError):
    """A file this library did not write, or wrote in another format version."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path next to `path`; on success it is renamed onto `path` with mode
    0666 & ~umask; on failure it is removed and `path` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Any], None]) -> None:
    """Writes text, bytes, or whatever `data(file)` writes to a binary file, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)


def dumps(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text: NaN and infinities (not JSON) become null."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """`dumps(obj)` written atomically."""
    atomic_write(path, dumps(obj, indent))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def write_meta(path: str | os.PathLike, fmt: str, indent: int | None = 1, **fields: Any) -> None:
    """A metadata file `{"format": fmt, **fields}`, written atomically."""
    write_json(path, {"format": fmt, **fields}, indent=indent)


def read_meta(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The metadata written by `write_meta(path, fmt, ...)`.

    FileNotFoundError when it is missing ("not a {what}"), FormatError when it is not JSON, not an
    object, or of another format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.path.dirname(path) or '.'} has no "
                                f"{os.path.basename(path)}: not {what}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != fmt:
        raise FormatError(f"{path} has format {meta.get('format')!r}, expected {fmt!r}")
    return meta


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays -> `{"a::b::c": array}` (float32 unless integer or bfloat16)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + SEP))
        else:
            arr = np.asarray(v)
            keep = np.issubdtype(arr.dtype, np.integer) or arr.dtype == ml_dtypes.bfloat16
            out[key] = np.ascontiguousarray(arr if keep else arr.astype(np.float32))
    return out


def unflatten(flat: dict[str, np.ndarray], sep: str = SEP) -> dict:
    """Inverse of `flatten` (keys nested at `sep`)."""
    tree: dict = {}
    for k, v in flat.items():
        node = tree
        *parts, last = k.split(sep)
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


def check_shapes(arrays: dict, expected: dict[str, tuple], where: str, what: str = "") -> None:
    """ValueError naming the first array of `expected` that is missing or of another shape."""
    for name, shape in expected.items():
        if name not in arrays:
            raise ValueError(f"{where}: {what}{name} is missing")
        if tuple(arrays[name].shape) != tuple(shape):
            raise ValueError(f"{where}: {what}{name} has shape {tuple(arrays[name].shape)}, "
                             f"expected {tuple(shape)}")


def save_tree(path: str | os.PathLike, tree: dict) -> None:
    """A nested dict of arrays as one safetensors file, atomically."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file(flatten(tree), tmp)


def load_tree(path: str | os.PathLike) -> dict:
    """The nested dict of numpy arrays saved by `save_tree`, bfloat16 ones widened to float32
    (exactly: every bfloat16 value is a float32 value)."""
    from safetensors.numpy import load_file

    try:
        flat = load_file(os.fspath(path))
        return unflatten({k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v
                          for k, v in flat.items()})
    except Exception as e:  # safetensors raises its own error types for damaged files
        if isinstance(e, FileNotFoundError):
            raise
        raise FormatError(f"{path}: not a readable safetensors file ({e})") from e
