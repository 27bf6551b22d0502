"""Contrastive training of the learned routing score across documents (`h2mt.route_score =
"memory"`, and the `memory` residual of the fused score).

The learned score `(s W_q)·(mean_m mem(u) W_k) / sqrt(d_h)` reads a question's summary vector
`s` (`H2MT.summary_vector`) and a node's memory. Here both are features computed once, with the
H2MT's current parameters, and only the routing projections `w_q`, `w_k` are trained: seconds of
CPU per hundred steps instead of a backbone pass per step. (The QA stage, `train/h2mt_qa.py`,
trains them together with the memories through DESIGN.md §4.2.6's routing loss; this stage
adds negatives from other documents, which that per-document loss never sees.)

Per question the candidates are its gold leaves and `hard` hard negatives mined by BM25 inside
its own document (its non-gold leaves with the highest BM25 scores); in a batch, each question
also scores every candidate of the batch's questions about *other* documents (in-batch
negatives; candidates of the same document are left out, since they may hold its evidence).
The loss is InfoNCE with several positives: the mean over a question's gold leaves of
`-log softmax(scores)[gold]`.

    feats = question_features(h2mt, index, question, gold, hard=8)   # one per question
    params, curve = fit_contrastive(h2mt.params, [feats, ...], steps=300)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from h2mt_jax.hierarchy.node_scores import bm25_scores
from h2mt_jax.hierarchy.route import MASKED


@dataclasses.dataclass(frozen=True)
class QuestionFeatures:
    """One training question: its summary vector `s` `[d]`, its candidates' mean-pooled memories
    `keys` `[c, d]` (gold first), how many are gold, and its document's id."""

    s: np.ndarray
    keys: np.ndarray
    n_gold: int
    doc: str


def question_features(h2mt, doc, doc_id: str, leaf_keys: np.ndarray, question: str,
                      gold: list[int], hard: int = 8) -> QuestionFeatures:
    """The features of one question over `doc` (an `Index` or leaves-only document) whose
    leaves' mean-pooled memories are `leaf_keys` `[n_leaves, d]`: its gold leaves and its
    `hard` best BM25 leaves that are not gold."""
    gold = sorted(set(int(g) for g in gold))
    if not gold:
        raise ValueError("a training question needs at least one gold leaf")
    ids = h2mt.tokenizer(question, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the question is empty")
    bm25 = bm25_scores(doc, question)[:doc.spec.n_leaves]
    negatives = [int(i) for i in np.argsort(-bm25, kind="stable") if int(i) not in gold][:hard]
    return QuestionFeatures(np.asarray(h2mt.summary_vector(ids), np.float32),
                            np.asarray(leaf_keys[gold + negatives], np.float32), len(gold), doc_id)


def _pad(batch: list[QuestionFeatures]):
    """Stacked `s` `[b, d]`, keys `[b, c, d]`, gold mask `[b, c]`, real mask `[b, c]`, doc ids
    `[b]`."""
    c = max(len(f.keys) for f in batch)
    d = batch[0].keys.shape[1]
    keys = np.zeros((len(batch), c, d), np.float32)
    gold = np.zeros((len(batch), c), bool)
    real = np.zeros((len(batch), c), bool)
    for i, f in enumerate(batch):
        keys[i, :len(f.keys)] = f.keys
        gold[i, :f.n_gold] = True
        real[i, :len(f.keys)] = True
    docs = {name: j for j, name in enumerate(sorted({f.doc for f in batch}))}
    return (np.stack([f.s for f in batch]), keys, gold, real,
            np.asarray([docs[f.doc] for f in batch], np.int32))


def contrastive_loss(proj: dict, s, keys, gold, real, docs) -> jnp.ndarray:
    """InfoNCE of a batch: `s` `[b, d]`, candidate keys `[b, c, d]`, masks `[b, c]`, document ids
    `[b]`; `proj` = {"w_q", "w_k"} `[d, d_h]` (see the module docstring)."""
    b, c, _ = keys.shape
    dh = proj["w_q"].shape[1]
    q = s @ proj["w_q"]  # [b, dh]
    k = (keys @ proj["w_k"]).reshape(b * c, dh)
    scores = q @ k.T / jnp.sqrt(jnp.float32(dh))  # [b, b*c]
    owner = jnp.repeat(jnp.arange(b), c)
    own = owner[None, :] == jnp.arange(b)[:, None]
    other_doc = docs[owner][None, :] != docs[:, None]
    allowed = real.reshape(-1)[None, :] & (own | other_doc)
    logp = jax.nn.log_softmax(jnp.where(allowed, scores, MASKED), axis=-1)
    is_gold = own & gold.reshape(-1)[None, :]
    per_q = -jnp.sum(jnp.where(is_gold, logp, 0.0), -1) / jnp.maximum(is_gold.sum(-1), 1)
    return per_q.mean()


def fit_contrastive(params: dict, features: list[QuestionFeatures], steps: int = 300,
                    batch: int = 32, lr: float = 1e-3, seed: int = 0
                    ) -> tuple[dict, list[float]]:
    """`params` with `w_q`, `w_k` trained on `features` (Adam, batches drawn at random; the same
    `seed`, the same result), and the loss of every step."""
    if len({f.doc for f in features}) < 2:
        raise ValueError("contrastive training needs questions about at least two documents")
    proj = {"w_q": jnp.asarray(params["w_q"]), "w_k": jnp.asarray(params["w_k"])}
    opt = optax.adam(lr)
    state = opt.init(proj)

    @jax.jit
    def step(proj, state, s, keys, gold, real, docs):
        loss, g = jax.value_and_grad(contrastive_loss)(proj, s, keys, gold, real, docs)
        upd, state = opt.update(g, state, proj)
        return optax.apply_updates(proj, upd), state, loss

    rng = np.random.default_rng(seed)
    c = max(len(f.keys) for f in features)
    curve = []
    for _ in range(steps):
        pick = rng.choice(len(features), size=min(batch, len(features)), replace=False)
        chosen = [features[i] for i in pick]
        s, keys, gold, real, docs = _pad(chosen)
        if keys.shape[1] < c:  # one shape: one compilation
            pad = c - keys.shape[1]
            keys = np.pad(keys, ((0, 0), (0, pad), (0, 0)))
            gold, real = (np.pad(x, ((0, 0), (0, pad))) for x in (gold, real))
        proj, state, loss = step(proj, state, s, keys, gold, real, docs)
        curve.append(float(loss))
    return {**params, "w_q": proj["w_q"], "w_k": proj["w_k"]}, curve
