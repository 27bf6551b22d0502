"""On-disk cache of converted weights and tokenizers, keyed by the source file's identity.

The first load of a GGUF dequantizes every tensor and converts the tokenizer (seconds); later loads
read one safetensors file. Entries are written to a temporary directory and renamed into place,
so an interrupted write never leaves a half entry behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import numpy as np

from h2mt_jax.backbone.config import BackboneConfig

FORMAT_VERSION = 1  # bump when the flat parameter layout changes


def cache_root() -> str:
    """`$H2MT_JAX_CACHE`, else `$XDG_CACHE_HOME/h2mt_jax`, else `~/.cache/h2mt_jax`."""
    root = os.environ.get("H2MT_JAX_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "h2mt_jax")


def source_key(path: str) -> str:
    """Identity of a weights file or directory: absolute path, sizes and modification times."""
    path = os.path.abspath(path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path))
    h = hashlib.sha1(f"v{FORMAT_VERSION}:{path}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def entry_dir(key: str) -> str:
    return os.path.join(cache_root(), "weights", key)


def load(key: str) -> tuple[BackboneConfig, dict[str, np.ndarray]] | None:
    """The cached (config, flat params) or None."""
    d = entry_dir(key)
    params, cfg = os.path.join(d, "params.safetensors"), os.path.join(d, "config.json")
    if not (os.path.isfile(params) and os.path.isfile(cfg)):
        return None
    from safetensors.numpy import load_file

    try:
        return BackboneConfig.from_json_file(cfg), load_file(params)
    except Exception:  # a damaged entry is rebuilt, never trusted
        shutil.rmtree(d, ignore_errors=True)
        return None


def save(key: str, cfg: BackboneConfig, flat: dict[str, np.ndarray]) -> None:
    """Stores an entry atomically; failures (read-only disk, full disk) are not fatal."""
    from safetensors.numpy import save_file

    final = entry_dir(key)
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".tmp-")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()},
                  os.path.join(tmp, "params.safetensors"))
        cfg.save(os.path.join(tmp, "config.json"))
        if os.path.isdir(final):
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(locals().get("tmp", ""), ignore_errors=True)


def tokenizer_dir(key: str) -> str:
    return os.path.join(entry_dir(key) + "-tokenizer")
