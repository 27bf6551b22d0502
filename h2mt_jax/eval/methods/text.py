"""Methods that put text in the prompt: the whole context (`full`), retrieved chunks (`rag_bm25`,
`rag_dense`) and question-aware compression (`compress`)."""

from __future__ import annotations

import re
import time

import numpy as np

from h2mt_jax.data import prompts
from h2mt_jax.eval.methods.base import MethodBase
from h2mt_jax.data.terms import STOPWORDS, terms, words
from h2mt_jax.eval.methods.scoring import chunk_ids, question_loglik, token_surprisal


class Full(MethodBase):
    """The whole context in the template, cut in the middle past the window (LongBench)."""

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        t0 = time.perf_counter()
        limit = self._max_tokens(max_new_tokens)
        tok = self.lm.tokenizer
        ids = prompts.prompt_ids(tok, template, context, question, max_tokens=limit)
        pred = self._generate(t0, ids, max_new_tokens,
                              prompts.template_prefix(tok, template, question, ids))
        rendered = prompts.render(template, context, question)
        pred.meta["truncated"] = len(self.lm.tokenizer(rendered, add_special_tokens=False)
                                     ["input_ids"]) > limit
        return pred


class _ChunkRAG(MethodBase):
    """Chunk (offline), rank chunks against the question, answer from the top-k raw texts."""

    def __init__(self, name, lm, window, k: int, chunk_tokens: int):
        super().__init__(name, lm, window)
        self.k, self.chunk_tokens = k, chunk_tokens

    def _build(self, context, fmt=None, outline=None):
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
        tok = self.lm.tokenizer
        ids = prompts.prompt_ids(tok, template, ctx, question,
                                 max_tokens=self._max_tokens(max_new_tokens))
        return self._generate(t0, ids, max_new_tokens,
                              prompts.template_prefix(tok, template, question, ids),
                              build_s=build_s, retrieved=top,
                              meta={"scores": [float(scores[i]) for i in top],
                                    "chunks": len(chunks)})


class BM25RAG(_ChunkRAG):
    """BM25 (rank_bm25's Okapi) over the stemmed terms of each chunk (`data.terms`: the same
    terms as the `bm25` routing score)."""

    def _index(self, chunks, texts):
        from rank_bm25 import BM25Okapi

        return BM25Okapi([terms(t) or ["_"] for t in texts])

    def _scores(self, index, question):
        return index.get_scores(terms(question))


class DenseRAG(_ChunkRAG):
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (chunk text vs question): the
    pretrained retriever a user would pick (`h2mt_jax.embedder`)."""

    embedder = None  # shared by every instance: loaded once

    def _embed(self, texts):
        if DenseRAG.embedder is None:
            from h2mt_jax.embedder import SentenceEmbedder

            DenseRAG.embedder = SentenceEmbedder.load()
        return DenseRAG.embedder.embed(texts)

    def _index(self, chunks, texts):
        return self._embed(texts)

    def _scores(self, index, question):
        return index @ self._embed([question])[0]


class Compress(MethodBase):
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
                if (w := "".join(words(tok.decode([i])))) and w not in STOPWORDS}

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
        pred = self._generate(t0, ids, max_new_tokens, len(pre), retrieved=info.pop("kept_chunks"),
                              meta=info)
        pred.meta.update(kept_tokens=len(kept), context=self.lm.tokenizer.decode(kept))
        return pred
