"""The embedded SmolLM2-135M-Instruct GGUF against transformers' PyTorch model on real text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_data


@pytest.fixture(scope="module")
def wiki_ids(smollm2):
    text = shared_data("wikitext2", "wiki.test.raw").read_text(encoding="utf-8")[:4000]
    ids = smollm2.tokenizer(text)["input_ids"][:320]
    assert len(ids) == 320
    return np.asarray([ids])


def test_logits_match_on_real_text(smollm2, smollm2_torch, wiki_ids):
    ours = np.asarray(smollm2.logits(wiki_ids))
    with torch.no_grad():
        theirs = smollm2_torch(torch.as_tensor(wiki_ids)).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_greedy_32_tokens_identical(smollm2, smollm2_torch):
    prompts = ["What is the capital of France?", "Write one sentence about the sea."]
    ids = smollm2.encode(prompts, chat=True)
    gen = smollm2.generate_ids(ids, max_new_tokens=32)
    for row, ours in zip(ids, gen.tokens):
        with torch.no_grad():
            out = smollm2_torch.generate(torch.as_tensor([row]), max_new_tokens=32, do_sample=False,
                                         attention_mask=torch.ones(1, len(row), dtype=torch.long))
        theirs = [int(t) for t in out[0, len(row):] if int(t) not in smollm2.eos_ids]
        assert ours == theirs[:len(ours)] and len(ours) == len(theirs)
    assert smollm2.generate(["What is the capital of France?"], max_new_tokens=16) == [
        "The capital of France is Paris."]


def test_bf16_decoding_within_tolerance(smollm2_gguf, smollm2, wiki_ids):
    import h2mt_jax

    b16 = h2mt_jax.load_lm(smollm2_gguf, dtype="bfloat16")
    a = np.asarray(smollm2.logits(wiki_ids[:, :128]))
    b = np.asarray(b16.logits(wiki_ids[:, :128]))
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.9
    assert b16.generate(["What is the capital of France?"], max_new_tokens=16) == [
        "The capital of France is Paris."]
