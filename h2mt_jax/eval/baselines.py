"""Every evaluation method of DESIGN.md §4.3 behind one interface (evaluate.py, bench/).

    method = make_method("rag_bm25", lm, k=4)
    method.prepare(doc_id, context)                       # offline, cached per document
    pred = method.answer(doc_id, context, question, template, max_new_tokens=32)
    pred.text, pred.ttft_s, pred.prompt_tokens, pred.retrieved

All methods share the backbone, the prompt templates (`data.prompts`, chat-formatted) and greedy
decoding. `ttft_s` runs from question arrival to the first token: it includes everything done at
question time (retrieval, compression, routing, query encoding, reading the document for `hmt`)
and the prefill. Per-document work that does not depend on the question (chunking, BM25 index,
chunk embeddings, the H²MT index) is done in `prepare` and reported as `build_s`.

Methods:
- full: the whole context; a prompt longer than `window` is cut in the middle as LongBench does.
- rag_bm25 / rag_dense: `chunk_tokens`-token chunks, top-k by BM25 or by cosine of mean-pooled
  backbone hidden states, joined in document order by blank lines.
- compress: LongLLMLingua-style question-aware compression (see `Compress`).
- hmt: the HMT memory reads the document, the prompt is the last segment.
- h2mt, h2mt_flat, h2mt_oracle, tree_text: H²MT with beam, flat or oracle routing; tree_text
  answers from the routed leaves' raw text (RAPTOR tree traversal).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from h2mt_jax.data import prompts
from h2mt_jax.generation.decode import bucket
from h2mt_jax.typing import Array, Float, Int

H2MT_METHODS = ("h2mt", "h2mt_flat", "h2mt_oracle", "tree_text")
METHODS = ("full", "rag_bm25", "rag_dense", "compress", "hmt") + H2MT_METHODS
ROWS = 16  # rows per batched backbone call (chunk embedding, coarse compression scores)
STOPWORDS = frozenset("a an the of in on at to for by is are was were be what which who whom "
                      "how when where does do did has have with from and or".split())


@dataclass
class Prediction:
    """One answer with its cost. `ttft_s`: question arrival -> first token; `total_s`: ttft +
    decode; `build_s`: offline per-document work (not in ttft); `retrieved`: chosen chunk or
    leaf ids, best first, when the method retrieves."""

    text: str
    ttft_s: float
    total_s: float
    prompt_tokens: int
    build_s: float = 0.0
    retrieved: list[int] | None = None
    meta: dict = field(default_factory=dict)


class Method(Protocol):
    name: str

    def prepare(self, doc_id: str, context: str) -> None: ...

    def answer(self, doc_id: str, context: str, question: str, template: str,
               max_new_tokens: int, gold_spans=None) -> Prediction: ...


# -- batched backbone calls ----------------------------------------------------------------------
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
        lp = _target_logprobs(lm.graphdef, lm.params,
                              jnp.asarray(_pad_rows([c + question for c in batch], ROWS, t)),
                              jnp.asarray(pos), jnp.asarray(tgt))
        scores.append(np.asarray(lp)[:len(batch), :len(question)].mean(1))
    return np.concatenate(scores)


def token_surprisal(lm, prefix: list[int], tokens: list[int]) -> np.ndarray:
    """-log p(tokens[j] | prefix ‖ tokens[:j]) from one forward pass: `[len(tokens)]`."""
    seq = prefix + tokens
    t, n = bucket(len(seq)), bucket(len(tokens))
    pos = np.zeros((1, n), np.int32)
    pos[0, :len(tokens)] = len(prefix) - 1 + np.arange(len(tokens))
    tgt = np.zeros((1, n), np.int32)
    tgt[0, :len(tokens)] = tokens
    lp = _target_logprobs(lm.graphdef, lm.params, jnp.asarray(_pad_rows([seq], 1, t)),
                          jnp.asarray(pos), jnp.asarray(tgt))
    return -np.asarray(lp)[0, :len(tokens)]


# -- text methods --------------------------------------------------------------------------------
def chunk_ids(tokenizer, text: str, n: int) -> list[list[int]]:
    """The text's token ids cut into consecutive chunks of `n` tokens (the last may be shorter)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + n] for i in range(0, len(ids), n)] or [[]]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class _Base:
    """Shared pieces: a per-instance cache of offline work and generation with timings."""

    def __init__(self, name: str, lm, window: int | None):
        if lm.tokenizer is None:
            raise ValueError(f"method {name!r} needs an LM with a tokenizer")
        self.name, self.lm, self.window = name, lm, window
        self._cache: dict[str, tuple[object, float]] = {}  # doc_id -> (offline state, build_s)

    def prepare(self, doc_id: str, context: str) -> None:
        if doc_id not in self._cache:
            t0 = time.perf_counter()
            state = self._build(context)
            self._cache[doc_id] = (state, time.perf_counter() - t0)

    def _build(self, context: str):
        return None

    def _state(self, doc_id: str, context: str):
        self.prepare(doc_id, context)
        return self._cache[doc_id]

    def _max_tokens(self, max_new_tokens: int) -> int:
        """The prompt budget in tokens, chat template included: `window`, or the model's
        positions minus the new tokens (`prompts.prompt_ids` cuts to fit it)."""
        if self.window is not None:
            return self.window
        return self.lm.config.max_position_embeddings - max_new_tokens

    def _generate(self, t0: float, ids: list[int], max_new_tokens: int, **kw) -> Prediction:
        """Greedy generation from prompt ids; times from `t0` (question arrival)."""
        gen = self.lm.generate_ids([ids], max_new_tokens=max_new_tokens)
        total = time.perf_counter() - t0
        text = self.lm.tokenizer.decode(gen.tokens[0], skip_special_tokens=True).strip()
        meta = {"prefill_s": gen.prefill_s, "decode_s": gen.decode_s, **kw.pop("meta", {})}
        return Prediction(text, total - gen.decode_s, total, len(ids), meta=meta, **kw)


class Full(_Base):
    """The whole context in the template, cut in the middle past the window (LongBench)."""

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        t0 = time.perf_counter()
        limit = self._max_tokens(max_new_tokens)
        ids = prompts.prompt_ids(self.lm.tokenizer, template, context, question, max_tokens=limit)
        pred = self._generate(t0, ids, max_new_tokens)
        rendered = prompts.render(template, context, question)
        pred.meta["truncated"] = len(self.lm.tokenizer(rendered, add_special_tokens=False)
                                     ["input_ids"]) > limit
        return pred


class _ChunkRAG(_Base):
    """Chunk (offline), rank chunks against the question, answer from the top-k raw texts."""

    def __init__(self, name, lm, window, k: int, chunk_tokens: int):
        super().__init__(name, lm, window)
        self.k, self.chunk_tokens = k, chunk_tokens

    def _build(self, context):
        chunks = chunk_ids(self.lm.tokenizer, context, self.chunk_tokens)
        texts = [self.lm.tokenizer.decode(c) for c in chunks]
        return chunks, texts, self._index(chunks, texts)

    def _index(self, chunks: list[list[int]], texts: list[str]):
        raise NotImplementedError

    def _scores(self, index, question: str) -> np.ndarray:
        raise NotImplementedError

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        (chunks, texts, index), build_s = self._state(doc_id, context)
        t0 = time.perf_counter()
        scores = np.asarray(self._scores(index, question))
        top = [int(i) for i in np.argsort(-scores, kind="stable")[:self.k]]
        ctx = "\n\n".join(texts[i] for i in sorted(top))
        ids = prompts.prompt_ids(self.lm.tokenizer, template, ctx, question,
                                 max_tokens=self._max_tokens(max_new_tokens))
        return self._generate(t0, ids, max_new_tokens, build_s=build_s, retrieved=top,
                              meta={"scores": [float(scores[i]) for i in top],
                                    "chunks": len(chunks)})


class BM25RAG(_ChunkRAG):
    """BM25 (rank_bm25's Okapi) over lower-cased word tokens of each chunk."""

    def _index(self, chunks, texts):
        from rank_bm25 import BM25Okapi

        return BM25Okapi([_words(t) or ["_"] for t in texts])

    def _scores(self, index, question):
        return index.get_scores(_words(question))


class DenseRAG(_ChunkRAG):
    """Cosine similarity of mean-pooled final-norm backbone hidden states (chunk vs question)."""

    def _index(self, chunks, texts):
        e = mean_hidden(self.lm, chunks)
        return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-6)

    def _scores(self, index, question):
        ids = self.lm.tokenizer(question, add_special_tokens=False)["input_ids"]
        q = mean_hidden(self.lm, [ids])[0]
        return index @ (q / max(float(np.linalg.norm(q)), 1e-6))


class Compress(_Base):
    """Question-aware prompt compression in the style of LongLLMLingua, with the backbone, all at
    question time (nothing is prepared offline).

    1. Coarse: the context is cut into `chunk_tokens` chunks; each is scored by the mean
       log-likelihood of the question tokens after it (one forward of `[chunk ‖ question]`,
       batched); the best chunks are kept, greedily in score order, up to 2 × `budget` tokens.
    2. Fine: the kept chunks in document order form one text; one forward pass of
       `[question ‖ kept text]` gives each token's surprisal -log p(token | question ‖ preceding
       kept text). The `budget` most surprising tokens are kept in their original order; tokens
       whose id occurs in the question (content words: stop words and punctuation excluded) are
       ranked first (by surprisal among themselves), so they survive unless they alone exceed
       the budget.
    The kept token ids go straight between the template's halves (`prompts.split_prompt`), so the
    context is exactly `budget` tokens (no re-tokenization drift); `meta["context"]` holds their
    decoded text. A context of at most `budget` tokens is used unchanged. Choices that differ from
    LongLLMLingua: no contrastive perplexity, no dynamic per-chunk ratios, no iterative segment
    conditioning on the compressed prefix, and the question is scored without an instruction.
    """

    def __init__(self, name, lm, window, chunk_tokens: int, budget: int):
        super().__init__(name, lm, window)
        self.chunk_tokens, self.budget = chunk_tokens, budget

    def _question_token_ids(self, question: str) -> set[int]:
        tok = self.lm.tokenizer
        ids = set(tok(question, add_special_tokens=False)["input_ids"])
        for w in set(re.findall(r"\w+", question)):
            ids |= set(tok(" " + w, add_special_tokens=False)["input_ids"])
        return {i for i in ids
                if (w := "".join(_words(tok.decode([i])))) and w not in STOPWORDS}

    def compress(self, context: str, question: str) -> tuple[list[int], dict]:
        """The compressed context's token ids (at most `budget`) and what was done."""
        tok = self.lm.tokenizer
        q = tok(question, add_special_tokens=False)["input_ids"]
        if not q:
            raise ValueError("the question is empty")
        chunks = chunk_ids(tok, context, self.chunk_tokens)
        n_tokens = sum(map(len, chunks))
        info = {"context_tokens": n_tokens, "coarse_s": 0.0, "fine_s": 0.0}
        if n_tokens <= self.budget:
            return [t for c in chunks for t in c], {**info, "kept_chunks": list(range(len(chunks)))}
        t0 = time.perf_counter()
        scores = question_loglik(self.lm, chunks, q)
        limit = min(2 * self.budget, self.lm.config.max_position_embeddings - len(q))
        keep, size = [], 0
        for i in np.argsort(-scores, kind="stable"):
            if size + len(chunks[i]) <= limit or not keep:
                keep.append(int(i))
                size += len(chunks[i])
        t1 = time.perf_counter()
        text = [t for i in sorted(keep) for t in chunks[i]][:limit]
        surprisal = token_surprisal(self.lm, q, text)
        forced = np.isin(np.asarray(text), list(self._question_token_ids(question)))
        priority = surprisal + np.where(forced, 1e4, 0.0)  # question tokens first, by surprisal
        kept = np.sort(np.argsort(-priority, kind="stable")[:self.budget])
        info.update(kept_chunks=keep, coarse_s=t1 - t0, fine_s=time.perf_counter() - t1,
                    coarse_tokens=len(text), forced_tokens=int(forced.sum()))
        return [text[i] for i in kept], info

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        t0 = time.perf_counter()
        kept, info = self.compress(context, question)
        pre, post = prompts.split_prompt(self.lm.tokenizer, template, question)
        ids = pre + kept + post
        pred = self._generate(t0, ids, max_new_tokens, retrieved=info.pop("kept_chunks"),
                              meta=info)
        pred.meta.update(kept_tokens=len(kept), context=self.lm.tokenizer.decode(kept))
        return pred


class HMTMethod(_Base):
    """HMT reads the document's token ids at question time (its memory depends on the reading,
    so it is part of ttft); the prompt with an empty context is the last segment."""

    def __init__(self, name, lm, window, hmt):
        super().__init__(name, lm, window)
        self.hmt = hmt

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        t0 = time.perf_counter()
        tok = self.lm.tokenizer
        doc = np.asarray(tok(context, add_special_tokens=False)["input_ids"], np.int32)
        ids = prompts.prompt_ids(tok, template, "", question)
        gen, timings = self.hmt.generate(doc, ids, max_new_tokens=max_new_tokens)
        total = time.perf_counter() - t0
        text = tok.decode(gen.tokens[0], skip_special_tokens=True).strip()
        return Prediction(text, total - gen.decode_s, total, len(ids) + 1,
                          meta={**timings, "prefill_s": gen.prefill_s, "decode_s": gen.decode_s,
                                "doc_tokens": len(doc)})


class H2MTMethod(_Base):
    """H²MT and its ablations: the index is built offline per document (`h2mt.build`); the answer
    routes the question (`route`) and reads memory tokens or, for tree_text, the leaves' text.
    `k` (shared with the RAG baselines) sets the number of selected leaves."""

    ROUTES = {"h2mt": ("beam", "memory"), "h2mt_flat": ("flat", "memory"),
              "h2mt_oracle": ("oracle", "memory"), "tree_text": ("beam", "text")}

    def __init__(self, name, lm, window, h2mt, k: int, fmt: str, index_cache: dict | None = None):
        super().__init__(name, lm, window)
        self.h2mt, self.k, self.fmt = h2mt, k, fmt
        if index_cache is not None:  # methods over the same H2MT share each document's build
            self._cache = index_cache

    def _build(self, context):
        return self.h2mt.build(context, fmt=self.fmt)

    def index(self, doc_id: str):
        """The index built for `doc_id` by `prepare`."""
        return self._cache[doc_id][0]

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        route, ctx = self.ROUTES[self.name]
        if route == "oracle" and gold_spans is None:
            raise ValueError(f"method {self.name!r} needs gold_spans (oracle routing)")
        index, build_s = self._state(doc_id, context)
        gold = None
        if gold_spans is not None and self.name in ("h2mt_oracle", "tree_text"):
            gold = index.leaves_for_spans([tuple(s) for s in gold_spans])
            if not gold:
                raise ValueError(f"method {self.name!r}: no leaf overlaps the gold spans")
            route = "oracle"
        a = self.h2mt.answer(index, question, template=template, max_new_tokens=max_new_tokens,
                             k=self.k, route=route, gold_leaves=gold, context=ctx)
        t = a.timings
        return Prediction(a.text, t["ttft_s"], t["total_s"], a.prompt_tokens, build_s=build_s,
                          retrieved=list(a.leaves),
                          meta={**t, "route": route, "memory_tokens": a.memory_tokens,
                                "scores": a.scores})


def make_method(name: str, lm, *, h2mt=None, hmt=None, k: int = 4, chunk_tokens: int = 128,
                compress_budget: int = 512, window: int | None = None,
                fmt: str = "auto", index_cache: dict | None = None) -> Method:
    """The evaluation method `name` (one of `METHODS`) over backbone `lm`.

    `k`: chunks (RAG) or leaves (H²MT) selected; `chunk_tokens`: chunk size for RAG and the
    coarse compression stage; `compress_budget`: context tokens kept by `compress`; `window`:
    prompt tokens before chat formatting, past which text prompts are cut in the middle (default:
    the model's positions - max_new_tokens - 16 - the chat template's tokens); `fmt`: the H²MT
    document format (`parse.parse_document`: "auto", or "qasper" / "narrativeqa" for those
    datasets). `hmt` is required by "hmt", `h2mt` by the H²MT methods; H²MT methods given the
    same `index_cache` dict build each document's index once between them."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if min(k, chunk_tokens, compress_budget) < 1:
        raise ValueError("k, chunk_tokens and compress_budget must be >= 1")
    if name == "full":
        return Full(name, lm, window)
    if name == "rag_bm25":
        return BM25RAG(name, lm, window, k, chunk_tokens)
    if name == "rag_dense":
        return DenseRAG(name, lm, window, k, chunk_tokens)
    if name == "compress":
        return Compress(name, lm, window, chunk_tokens, compress_budget)
    if name == "hmt":
        if hmt is None:
            raise ValueError("method 'hmt' needs an HMT (make_method(..., hmt=HMT(...)))")
        return HMTMethod(name, lm, window, hmt)
    if h2mt is None:
        raise ValueError(f"method {name!r} needs an H2MT (make_method(..., h2mt=H2MT(...)))")
    return H2MTMethod(name, lm, window, h2mt, k, fmt, index_cache)
