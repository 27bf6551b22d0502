"""The torch-free GGUF tokenizer against transformers' own GGUF tokenizer (which imports torch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import SHARED_DATA, shared_data
from h2mt_jax.weights import CheckpointError
from h2mt_jax.weights.tokenizer import tokenizer_from_gguf

EXTRA = ["<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "emoji 🤖 ünïcödé \x00\x01\x7f tabs\t\t  x",
         "  leading and trailing  \n\n\n", "<|im_start|><|im_start|>half<|im_", "日本語のテキスト"]


@pytest.fixture(scope="module")
def pair(smollm2_gguf):
    import transformers

    transformers.logging.set_verbosity_error()
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smollm2_gguf),
                                                     gguf_file=os.path.basename(smollm2_gguf))
    return tokenizer_from_gguf(smollm2_gguf), ref


def _texts():
    shared_data()  # skips with the reason when ../shared/data is absent
    files = sorted(p for p in SHARED_DATA.rglob("*") if p.is_file())
    assert len(files) >= 10
    return [p.read_text(encoding="utf-8", errors="replace")[:20000] for p in files]


def test_same_ids_and_decoding_on_every_shared_file(pair):
    ours, ref = pair
    for text in _texts() + EXTRA:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    # byte fallback: a token that is half of a UTF-8 character decodes the same way
    robot = ours("🤖")["input_ids"]
    assert len(robot) > 1 and ours.decode(robot[:1]) == ref.decode(robot[:1])


def test_same_special_tokens_and_chat_template(pair):
    ours, ref = pair
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == (
        ref.bos_token, ref.eos_token, ref.pad_token, ref.unk_token)
    assert ours.all_special_ids == ref.all_special_ids and len(ours) == len(ref)
    for messages in ([{"role": "user", "content": "What is 2+2?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]):
        for gen in (True, False):
            a = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert a == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours(a)["input_ids"] == ref(a)["input_ids"]


def test_cached_tokenizer_reloads_identically(smollm2_gguf, tmp_path, monkeypatch):
    from h2mt_jax.weights import load_tokenizer, resolve

    monkeypatch.setenv("H2MT_JAX_CACHE", str(tmp_path))
    first = load_tokenizer(resolve(smollm2_gguf))
    entries = list((tmp_path / "weights").iterdir())
    assert [e.name.endswith("-tokenizer") for e in entries] == [True]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in entries[0].iterdir()}
    second = load_tokenizer(resolve(smollm2_gguf))
    assert second is not first
    text = "The warranty lasts 48 months. <|im_end|>"
    assert second(text)["input_ids"] == first(text)["input_ids"]
    assert second.chat_template == first.chat_template
    assert not [p for p in (tmp_path / "weights").iterdir() if p.name.startswith(".tmp")]


def test_runtime_path_imports_no_torch(smollm2_gguf, tmp_path):
    # Loading the default model (weights and tokenizer) must not import torch: it is a test extra.
    code = ("import sys, h2mt_jax; lm = h2mt_jax.load_lm('smollm2-135m-instruct'); "
            "assert lm.tokenizer is not None; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "H2MT_JAX_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("cut", [8, 600, 2_000_000])
def test_truncated_gguf_is_a_clear_error(smollm2_gguf, tmp_path, cut):
    import h2mt_jax

    bad = tmp_path / "cut.gguf"
    with open(smollm2_gguf, "rb") as f:
        bad.write_bytes(f.read(cut))
    with pytest.raises(CheckpointError, match="cut.gguf"):
        h2mt_jax.load_lm(bad)


def test_not_a_gguf_is_a_clear_error(tmp_path):
    import h2mt_jax

    bad = tmp_path / "notes.gguf"
    bad.write_text("these are not weights\n" * 50)
    with pytest.raises(CheckpointError, match=r"notes\.gguf: not a readable GGUF"):
        h2mt_jax.load_lm(bad)
