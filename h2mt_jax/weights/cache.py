"""On-disk cache of converted weights and tokenizers, keyed by the source file's identity.

The first load of a GGUF dequantizes every tensor and converts the tokenizer (seconds); later loads
read one safetensors file. Entries are keyed on the content hash of the source (and the
converter's version) and read and replaced under a per-entry `fcntl` lock; they are written to a
temporary directory and renamed into place, so an interrupted write never leaves a half entry.
The cache trusts what it finds under a key: point `H2MT_JAX_CACHE` at a directory only you can
write to (a shared, world-writable cache lets another user plant weights). A cache directory owned
by another user is refused (`CacheOwnerError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile

import numpy as np

from h2mt_jax.backbone.config import BackboneConfig

FORMAT_VERSION = 2  # bump when the flat parameter layout or the conversion changes


class CacheOwnerError(PermissionError):
    """The cache directory belongs to another user: its entries cannot be trusted."""


def cache_root() -> str:
    """`$H2MT_JAX_CACHE`, else `$XDG_CACHE_HOME/h2mt_jax`, else `~/.cache/h2mt_jax`; refused
    (`CacheOwnerError`) when it exists and another user owns it."""
    root = os.environ.get("H2MT_JAX_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "h2mt_jax")
    try:
        owner = os.stat(root).st_uid
    except FileNotFoundError:
        return root
    if owner != os.getuid():
        raise CacheOwnerError(
            f"the weight cache {root} is owned by uid {owner}, not by you (uid {os.getuid()}): "
            "its entries would be loaded as weights, so it must be a directory only you can "
            "write to; set H2MT_JAX_CACHE to one")
    return root


def _content_hash(path: str) -> str:
    """sha256 of a file's bytes, remembered under its (size, mtime, ctime, inode) so that the
    file is read once; a rewrite changes ctime (which no user call can restore), so an edited
    file is hashed again even when its size and mtime were put back."""
    st = os.stat(path)
    stamp = f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    memo = os.path.join(cache_root(), "hashes", hashlib.sha1(stamp.encode()).hexdigest())
    try:
        with open(memo) as f:
            digest = f.read().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        tmp = f"{memo}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(digest)
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest


def source_key(path: str) -> str:
    """Identity of a weights file or directory: the content hashes of its files and the
    converter's version (`FORMAT_VERSION`), so a file rewritten with other weights never gets
    the old conversion."""
    path = os.path.abspath(path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    h = hashlib.sha1(f"v{FORMAT_VERSION}".encode())
    for f in files:
        h.update(f"{os.path.basename(f)}:{_content_hash(f)}".encode())
    return h.hexdigest()[:20]


@contextlib.contextmanager
def locked(key: str):
    """An exclusive `fcntl` lock on one entry, held while it is written or read: concurrent
    processes never see a half-replaced entry."""
    os.makedirs(os.path.join(cache_root(), "locks"), exist_ok=True)
    with open(os.path.join(cache_root(), "locks", key + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def entry_dir(key: str) -> str:
    return os.path.join(cache_root(), "weights", key)


def load(key: str) -> tuple[BackboneConfig, dict[str, np.ndarray]] | None:
    """The cached (config, flat params) or None (a miss: absent, or damaged and removed)."""
    from safetensors.numpy import load_file

    d = entry_dir(key)
    params, cfg = os.path.join(d, "params.safetensors"), os.path.join(d, "config.json")
    with locked(key):
        try:
            return BackboneConfig.from_json_file(cfg), load_file(params)
        except FileNotFoundError:
            return None
        except Exception:  # a damaged entry is rebuilt, never trusted
            shutil.rmtree(d, ignore_errors=True)
            return None


def save(key: str, cfg: BackboneConfig, flat: dict[str, np.ndarray]) -> None:
    """Stores an entry atomically; failures (read-only disk, full disk) are not fatal."""
    from safetensors.numpy import save_file

    final = entry_dir(key)
    tmp = None
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(final), prefix=".tmp-")
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()},
                  os.path.join(tmp, "params.safetensors"))
        cfg.save(os.path.join(tmp, "config.json"))
        with locked(key):
            if os.path.isdir(final):
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def tokenizer_dir(key: str) -> str:
    return os.path.join(entry_dir(key) + "-tokenizer")
