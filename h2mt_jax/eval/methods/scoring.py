"""Batched backbone calls and text pieces the retrieval and compression methods share: mean-pooled
hidden states, question log-likelihood per chunk, token surprisal, token chunks, word lists."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.shapes import bucket
from h2mt_jax.typing import Array, Float, Int

ROWS = 16  # rows per batched backbone call (chunk embedding, coarse compression scores)
@functools.partial(jax.jit, static_argnames=("graphdef",))
def _target_logprobs(graphdef, params, ids: Int[Array, "b t"], pos: Int[Array, "b n"],
                     targets: Int[Array, "b n"]) -> Float[Array, "b n"]:
    """log p(targets[b, j] | ids[b, :pos[b, j] + 1]): logits only at the `n` gathered positions."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model(model.embed(ids))
    h = jnp.take_along_axis(hidden, pos[..., None], axis=1)
    logp = jax.nn.log_softmax(model.logits(h), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def _pad_rows(rows: list[list[int]], n_rows: int, length: int) -> np.ndarray:
    out = np.zeros((n_rows, length), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def mean_hidden(lm, rows: list[list[int]]) -> np.ndarray:
    """Mean of the final-norm hidden states over each row's tokens: `[n, d]` float32. Rows are
    right-padded to a length bucket (causal attention: padding never reaches real tokens) and run
    `ROWS` at a time; the mean is masked to the real tokens."""
    model, t = lm.model, bucket(max(len(r) for r in rows))
    out = []
    for a in range(0, len(rows), ROWS):
        batch = rows[a:a + ROWS]
        h = lm.hidden_states(model.embed(jnp.asarray(_pad_rows(batch, ROWS, t))))
        lengths = np.asarray([len(r) for r in batch] + [1] * (ROWS - len(batch)))
        m = jnp.asarray(np.arange(t)[None, :] < lengths[:, None], jnp.float32)[..., None]
        out.append(np.asarray(jnp.sum(h * m, 1) / jnp.sum(m, 1))[:len(batch)])
    return np.concatenate(out).astype(np.float32)


def question_loglik(lm, chunks: list[list[int]], question: list[int]) -> np.ndarray:
    """Mean log p(question | chunk) per chunk, from one forward of `[chunk ‖ question]` per row,
    `ROWS` rows per call: `[n_chunks]`."""
    t = bucket(max(len(c) for c in chunks) + len(question))
    n = bucket(len(question))
    scores = []
    for a in range(0, len(chunks), ROWS):
        batch = chunks[a:a + ROWS]
        pos = np.zeros((ROWS, n), np.int32)
        for i, c in enumerate(batch):  # position len(c)-1+j predicts question token j
            pos[i, :len(question)] = len(c) - 1 + np.arange(len(question))
        tgt = np.zeros((ROWS, n), np.int32)
        tgt[:, :len(question)] = question
        logp = _target_logprobs(lm.graphdef, lm.params,
                              jnp.asarray(_pad_rows([c + question for c in batch], ROWS, t)),
                              jnp.asarray(pos), jnp.asarray(tgt))
        scores.append(np.asarray(logp)[:len(batch), :len(question)].mean(1))
    return np.concatenate(scores)


def token_surprisal(lm, prefix: list[int], tokens: list[int]) -> np.ndarray:
    """-log p(tokens[j] | prefix ‖ tokens[:j]) from one forward pass: `[len(tokens)]`."""
    seq = prefix + tokens
    t, n = bucket(len(seq)), bucket(len(tokens))
    pos = np.zeros((1, n), np.int32)
    pos[0, :len(tokens)] = len(prefix) - 1 + np.arange(len(tokens))
    tgt = np.zeros((1, n), np.int32)
    tgt[0, :len(tokens)] = tokens
    logp = _target_logprobs(lm.graphdef, lm.params, jnp.asarray(_pad_rows([seq], 1, t)),
                          jnp.asarray(pos), jnp.asarray(tgt))
    return -np.asarray(logp)[0, :len(tokens)]


def chunk_ids(tokenizer, text: str, n: int) -> list[list[int]]:
    """The text's token ids cut into consecutive chunks of `n` tokens (the last may be shorter)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + n] for i in range(0, len(ids), n)] or [[]]
