"""The interface every evaluation method implements, and what they share: the `Prediction`, the
per-document cache of offline work, greedy generation with timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

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

    def prepare(self, doc_id: str, context: str, fmt: str | None = None,
                outline=None) -> None: ...

    def answer(self, doc_id: str, context: str, question: str, template: str,
               max_new_tokens: int, gold_spans=None) -> Prediction: ...

    def release(self, doc_id: str) -> None: ...


class MethodBase:
    """Shared pieces: a per-instance cache of offline work and generation with timings."""

    def __init__(self, name: str, lm, window: int | None):
        if lm.tokenizer is None:
            raise ValueError(f"method {name!r} needs an LM with a tokenizer")
        self.name, self.lm, self.window = name, lm, window
        self._cache: dict[str, tuple[object, float]] = {}  # doc_id -> (offline state, build_s)

    def prepare(self, doc_id: str, context: str, fmt: str | None = None, outline=None) -> None:
        """Offline, per-document work (once per `doc_id`). `fmt` and `outline` describe the
        document's structure for methods that parse it (H²MT)."""
        if doc_id not in self._cache:
            t0 = time.perf_counter()
            state = self._build(context, fmt=fmt, outline=outline)
            self._cache[doc_id] = (state, time.perf_counter() - t0)

    def _build(self, context: str, fmt: str | None = None, outline=None):
        return None

    def release(self, doc_id: str) -> None:
        """Drops `doc_id`'s offline state (built again by the next `prepare`)."""
        self._cache.pop(doc_id, None)

    def _state(self, doc_id: str, context: str):
        self.prepare(doc_id, context)
        return self._cache[doc_id]

    def _max_tokens(self, max_new_tokens: int) -> int:
        """The prompt budget in tokens, chat template included: `window`, or the model's
        positions minus the new tokens (`prompts.prompt_ids` cuts to fit it)."""
        if self.window is not None:
            return self.window
        return self.lm.config.max_position_embeddings - max_new_tokens

    def _generate(self, t0: float, ids: list[int], max_new_tokens: int, prefix_len: int = 0,
                  **kw) -> Prediction:
        """Greedy generation from prompt ids; times from `t0` (question arrival). The first
        `prefix_len` ids (the template's opening, `prompts.template_prefix`) are read from the
        LM's prefix cache, as for every method that answers through a template."""
        if prefix_len:
            gen = self.lm.generate_ids([ids[prefix_len:]], prefix=ids[:prefix_len],
                                       max_new_tokens=max_new_tokens)
        else:
            gen = self.lm.generate_ids([ids], max_new_tokens=max_new_tokens)
        total = time.perf_counter() - t0
        text = self.lm.tokenizer.decode(gen.tokens[0], skip_special_tokens=True).strip()
        meta = {"prefill_s": gen.prefill_s, "decode_s": gen.decode_s, **kw.pop("meta", {})}
        return Prediction(text, total - gen.decode_s, total, len(ids), meta=meta, **kw)
