"""Methods that answer from memories: HMT reading the document at question time (`hmt`) and
H²MT over its offline index (`h2mt`, `h2mt_flat`, `h2mt_oracle`, and `tree_text`, which reads
the routed leaves' text)."""

from __future__ import annotations

import time

import numpy as np

from h2mt_jax.data import prompts
from h2mt_jax.eval.methods.base import MethodBase, Prediction


class HMTMethod(MethodBase):
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


class H2MTMethod(MethodBase):
    """H²MT and its ablations: the index is built offline per document (`h2mt.build`); the answer
    routes the question (`route`) and reads the selected leaves as memory vectors (`h2mt`,
    `h2mt_flat`, `h2mt_oracle`), write-token KV (`h2mt_memory_kv`), stored leaf KV caches
    (`h2mt_leaf_kv`) or raw text (`tree_text`). `k` (shared with the RAG baselines) sets the
    number of selected leaves; `kv_store` the dtype of the stored KV caches (the KV methods need
    them; methods sharing `index_cache` must agree on it)."""

    ROUTES = {"h2mt": ("beam", "memory"), "h2mt_flat": ("flat", "memory"),
              "h2mt_oracle": ("oracle", "memory"), "h2mt_memory_kv": ("beam", "memory_kv"),
              "h2mt_leaf_kv": ("beam", "leaf_kv"), "tree_text": ("beam", "text")}

    def __init__(self, name, lm, window, h2mt, k: int, fmt: str, index_cache: dict | None = None,
                 kv_store: str | None = None):
        super().__init__(name, lm, window)
        self.h2mt, self.k, self.fmt = h2mt, k, fmt
        needs_kv = self.ROUTES[name][1] in ("memory_kv", "leaf_kv")
        if kv_store is None:
            kv_store = h2mt.config.kv_store
        self.kv_store = "bfloat16" if needs_kv and kv_store == "none" else kv_store
        if index_cache is not None:  # methods over the same H2MT share each document's build
            self._cache = index_cache

    def _build(self, context, fmt=None, outline=None):
        return self.h2mt.build(context, fmt=fmt or self.fmt, outline=outline,
                               kv_store=self.kv_store)

    def index(self, doc_id: str):
        """The index built for `doc_id` by `prepare`."""
        return self._cache[doc_id][0]

    def answer(self, doc_id, context, question, template, max_new_tokens, gold_spans=None):
        route, ctx = self.ROUTES[self.name]
        if route == "oracle" and gold_spans is None:
            raise ValueError(f"method {self.name!r} needs gold_spans (oracle routing)")
        index, build_s = self._state(doc_id, context)
        gold = None
        if route == "oracle":
            gold = index.leaves_for_spans([tuple(s) for s in gold_spans])
            if not gold:
                raise ValueError(f"method {self.name!r}: no leaf overlaps the gold spans")
        a = self.h2mt.answer(index, question, template=template, max_new_tokens=max_new_tokens,
                             k=self.k, route=route, gold_leaves=gold, answer_from=ctx)
        t = a.timings
        return Prediction(a.text, t["ttft_s"], t["total_s"], a.prompt_tokens, build_s=build_s,
                          retrieved=list(a.leaves),
                          meta={**t, "route": route, "memory_tokens": a.memory_tokens,
                                "scores": a.scores})
