"""One evaluation example, scored the same way everywhere: `evaluate.py` (the runner) and the
training-time evaluation of `train.py` both call `evaluate_example`, so the same checkpoint and
items give the same F1, ROUGE-L and routing recall in both."""

from __future__ import annotations

import dataclasses
import os
import time

from h2mt_jax.data import prompts
from h2mt_jax.data.items import QAItem
from h2mt_jax.eval.metrics import leaf_recall, rouge_l_score, score_example
from h2mt_jax.eval.peak_memory import PeakMemory

RECALL_AT = (2, 4)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Prompt templates and generation lengths of an evaluation. `prompt_dirs`: where LongBench's
    dataset2prompt.json / dataset2maxlen.json are looked for; `max_new_tokens`: 0 for each
    dataset's LongBench length."""

    prompt_dirs: tuple[str, ...] = ()
    max_new_tokens: int = 0

    @classmethod
    def from_config(cls, config) -> "EvalSettings":
        dirs = [config.data.prompt_dir] if config.data.get("prompt_dir") else []
        if config.data.source == "longbench" and config.data.path:
            dirs.append(os.path.dirname(os.path.abspath(config.data.path)))
        return cls(tuple(dirs), int(config.eval.get("max_new_tokens", 0) or 0))

    def template(self, dataset: str) -> str:
        return prompts.template_for(dataset, *self.prompt_dirs)

    def new_tokens(self, dataset: str) -> int:
        if self.max_new_tokens:
            return self.max_new_tokens
        return prompts.load_max_new_tokens(*self.prompt_dirs).get(
            dataset, prompts.DEFAULT_MAX_NEW_TOKENS)


def evaluate_example(method, item: QAItem, settings: EvalSettings) -> dict:
    """Answers `item` with `method` (building its document first, with the item's own format and
    outline) and scores it: a row with the prediction, `f1` (the dataset's LongBench metric, in
    [0, 1]), `rouge_l`, `ttft_s`, `total_s`, `build_s`, `peak_mem_mb` and, for methods that route
    over an index, `recall@2` / `recall@4` against the gold leaves. A `ValueError` (an oracle
    without gold, say) is recorded as `error` instead."""
    row = {"method": method.name, "id": item.qid or item.doc_id, "doc_id": item.doc_id,
           "dataset": item.dataset, "question": item.question, "answers": item.answers}
    try:
        t0 = time.perf_counter()
        method.prepare(item.doc_id, item.context, fmt=item.fmt, outline=item.outline)
        row["build_s"] = time.perf_counter() - t0
        with PeakMemory() as mem:
            pred = method.answer(item.doc_id, item.context, item.question,
                                 settings.template(item.dataset),
                                 settings.new_tokens(item.dataset), gold_spans=item.gold_spans)
        row.update(prediction=pred.text, ttft_s=pred.ttft_s, total_s=pred.total_s,
                   prompt_tokens=pred.prompt_tokens, peak_mem_mb=mem.working_mb,
                   f1=score_example(item.dataset, pred.text, item.answers, strict=False),
                   rouge_l=max(rouge_l_score(pred.text, a) for a in item.answers))
        if pred.build_s:
            row["build_s"] = pred.build_s
        index = getattr(method, "index", None)
        if item.gold_spans and pred.retrieved is not None and index is not None:
            gold = set(index(item.doc_id).leaves_for_spans(item.gold_spans))
            if gold:
                row["gold_leaves"] = len(gold)
                for k in RECALL_AT:
                    row[f"recall@{k}"] = leaf_recall(gold, pred.retrieved, k)
    except ValueError as e:
        row["error"] = str(e)[:300]
    return row


def warm_up(method, item: QAItem, settings: EvalSettings, new_tokens: int | None = None
            ) -> None:
    """One unrecorded answer (of `new_tokens`, default the dataset's), so compilation is not
    counted in the example's TTFT."""
    try:
        method.prepare(item.doc_id, item.context, fmt=item.fmt, outline=item.outline)
        method.answer(item.doc_id, item.context, item.question, settings.template(item.dataset),
                      new_tokens or settings.new_tokens(item.dataset), gold_spans=item.gold_spans)
    except ValueError:
        pass
