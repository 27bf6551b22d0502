"""Every evaluation method behind one interface (evaluate.py, training-time evaluation, bench/).

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
- h2mt, h2mt_flat, h2mt_oracle: H²MT with beam, flat or oracle routing, answering from the
  selected leaves' memory vectors; h2mt_memory_kv / h2mt_leaf_kv: beam routing, answering from the
  leaves' stored write-token / full KV caches; tree_text: from the routed leaves' raw text
  (RAPTOR tree traversal).
"""

from __future__ import annotations

from h2mt_jax.data.terms import STOPWORDS
from h2mt_jax.eval.methods.base import Method, MethodBase, Prediction
from h2mt_jax.eval.methods.memory import H2MTMethod, HMTMethod
from h2mt_jax.eval.methods.scoring import chunk_ids
from h2mt_jax.eval.methods.text import BM25RAG, Compress, DenseRAG, Full

__all__ = ["BM25RAG", "Compress", "DenseRAG", "Full", "H2MTMethod", "H2MT_METHODS", "HMTMethod",
           "KV_METHODS", "METHODS", "Method", "MethodBase", "Prediction", "STOPWORDS", "chunk_ids", "make_method"]

H2MT_METHODS = ("h2mt", "h2mt_flat", "h2mt_oracle", "h2mt_memory_kv", "h2mt_leaf_kv",
                "tree_text")
KV_METHODS = ("h2mt_memory_kv", "h2mt_leaf_kv")  # need the leaves' stored KV caches
METHODS = ("full", "rag_bm25", "rag_dense", "compress", "hmt") + H2MT_METHODS


def make_method(name: str, lm, *, h2mt=None, hmt=None, k: int = 4, chunk_tokens: int = 128,
                compress_budget: int = 512, window: int | None = None,
                fmt: str = "auto", index_cache: dict | None = None,
                kv_store: str | None = None) -> Method:
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
    return H2MTMethod(name, lm, window, h2mt, k, fmt, index_cache, kv_store)
