"""H²MT's answer modes side by side: F1 / ROUGE-L of `memory`, `memory_kv`, `leaf_kv` and `text`
on held-out synthetic manuals, with oracle routing (isolates the answer path) and beam routing,
plus the TTFT of each mode at 8k document tokens (median of 5), index bytes per 1k document
tokens (bfloat16 and int8 KV) and build time. `memory` reads the slots' stored keys/values of an
index built with `kv_store`; `memory_prefilled` (an index without them) prefills the slots with
the question: its F1 is scored when `--modes` names it, its TTFT always.

The manuals are the demo's held-out ones (seed 0, documents `--train-docs` .. `+ --eval-docs`),
never trained on. Parameters: fresh (untrained) unless `--checkpoint` names an H2MT directory.
Every mode reads the same route and the same prompt template, through the same answer backbone
(a checkpoint's decoder adapters included); leaf_kv is exact (the leaves' own KV caches), so with
oracle routing its F1 should be close to `text`'s (target >= 0.95x); memory and memory_kv are the
trained compressed memories (targets with oracle routing: >= 0.6x and >= 0.8x `text`'s F1; TTFT
at 8k at most 1.5x the empty-context floor).

    python bench/answer_quality.py [--eval-docs 4] [--checkpoint runs/demo/model] > out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODES = ("memory", "memory_kv", "leaf_kv", "text")
# `memory` on an index built without stored keys/values: the slots are prefilled with the
# question (one joint prompt) instead of read from their stored keys/values
PREFILLED = "memory_prefilled"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-docs", type=int, default=16, help="documents before the held-out ones")
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--chapters", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--ttft-tokens", type=int, default=8192, help="0: no TTFT measurement")
    ap.add_argument("--routes", default="oracle,beam", help="comma-separated: oracle, beam")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="answer modes to score (the TTFT part needs the first four)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--predictions", action="store_true",
                    help="also write every answer: predictions[route/mode] = [[question, "
                         "prediction, gold answers], ...]")
    args = ap.parse_args()
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= set(MODES) | {PREFILLED} or "text" not in modes:
        raise SystemExit(f"--modes must name some of {MODES + (PREFILLED,)}, text included")
    if not set(routes) <= {"oracle", "beam"}:
        raise SystemExit("--routes must name oracle and/or beam")

    import numpy as np
    from tqdm.auto import tqdm

    import h2mt_jax
    from h2mt_jax.data import prompts
    from h2mt_jax.data.items import synthetic_items
    from h2mt_jax.eval.metrics import rouge_l_score, score_example
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import H2MT

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from ttft import make_document

    lm = h2mt_jax.load_lm(args.backbone)
    h2mt = (H2MT.load(args.checkpoint, lm) if args.checkpoint
            else H2MT.create(lm, H2MTConfig(k=args.k)))
    items = synthetic_items(0, args.eval_docs, args.train_docs, chapters=args.chapters)
    template = prompts.SYNTHETIC_TEMPLATE
    new_tokens = prompts.load_max_new_tokens().get("synthetic", 16)
    out = {"bench": "answer_quality", "args": vars(args), "questions": len(items)}

    indexes, build_s, tokens, plain = {}, {}, {}, {}
    h2mt.build(items[0].context, fmt="markdown", kv_store="bfloat16")  # compiles
    for it in items:
        if it.doc_id not in indexes:
            t0 = time.perf_counter()
            indexes[it.doc_id] = h2mt.build(it.context, fmt="markdown", kv_store="bfloat16")
            build_s[it.doc_id] = time.perf_counter() - t0
            tokens[it.doc_id] = indexes[it.doc_id].timings["leaf_tokens"]
            if PREFILLED in modes:
                plain[it.doc_id] = h2mt.build(it.context, fmt="markdown", kv_store="none")
    out["build_s_per_1k_tokens"] = 1000 * sum(build_s.values()) / sum(tokens.values())
    scores, predictions = {}, {}
    for route in routes:
        for mode in modes:
            f1, rl, said, hops = [], [], [], []
            for it in tqdm(items, desc=f"{route} {mode}", leave=False):
                index = (plain if mode == PREFILLED else indexes)[it.doc_id]
                gold = index.leaves_for_spans(it.gold_spans)
                a = h2mt.answer(index, it.question, template=template, max_new_tokens=new_tokens,
                                k=args.k, route=route, gold_leaves=gold,
                                answer_from="memory" if mode == PREFILLED else mode)
                f1.append(score_example("synthetic", a.text, it.answers))
                rl.append(max(rouge_l_score(a.text, g) for g in it.answers))
                said.append([it.question, a.text, list(it.answers)])
                hops.append(len(it.gold_spans))  # synthetic: one span per fact the answer needs
            predictions[f"{route}/{mode}"] = said
            scores[f"{route}/{mode}"] = {
                "f1": 100 * float(np.mean(f1)), "rouge_l": 100 * float(np.mean(rl)),
                "f1_by_hops": {str(h): 100 * float(np.mean([x for x, n in zip(f1, hops) if n == h]))
                               for h in sorted(set(hops))}}
    out["quality"] = scores
    if args.predictions:
        out["predictions"] = predictions
    if "oracle" not in routes:
        print(json.dumps(out, indent=1))
        return
    text_f1 = scores["oracle/text"]["f1"]
    if "leaf_kv" in modes:
        out["oracle_leaf_kv_f1_vs_text"] = (scores["oracle/leaf_kv"]["f1"] / text_f1
                                            if text_f1 else None)
    ratio = {m: (scores[f"oracle/{m}"]["f1"] / text_f1 if text_f1 else None) for m in modes}
    out["oracle_f1_vs_text"] = ratio
    if not args.ttft_tokens or not set(MODES) <= set(modes):
        print(json.dumps(out, indent=1))
        return

    # TTFT at ~8k document tokens, every mode on one index; the empty-context floor beside it
    text, q = make_document(lm, args.ttft_tokens)
    t0 = time.perf_counter()
    index = h2mt.build(text, fmt="markdown", kv_store="bfloat16")
    out["ttft_doc_build_s"] = time.perf_counter() - t0
    doc_tokens = index.timings["leaf_tokens"]
    ttft = {}
    empty_ids = prompts.prompt_ids(lm.tokenizer, template, "", q.question)
    n_pre = prompts.template_prefix(lm.tokenizer, template, q.question, empty_ids)

    def empty_prefill() -> float:  # with the template's opening cached, as every mode reads it
        return lm.generate_ids([empty_ids[n_pre:]], prefix=empty_ids[:n_pre],
                               max_new_tokens=new_tokens).prefill_s

    empty_prefill()
    ttft["empty"] = statistics.median(empty_prefill() for _ in range(args.repeats))
    for mode in MODES:
        h2mt.answer(index, q.question, template=template, max_new_tokens=new_tokens,
                    answer_from=mode)  # compiles
        ttft[mode] = statistics.median(
            h2mt.answer(index, q.question, template=template, max_new_tokens=new_tokens,
                        answer_from=mode).timings["ttft_s"] for _ in range(args.repeats))
    plain_index = h2mt.build(text, fmt="markdown", kv_store="none")
    h2mt.answer(plain_index, q.question, template=template, max_new_tokens=new_tokens,
                answer_from="memory")  # compiles
    ttft[PREFILLED] = statistics.median(
        h2mt.answer(plain_index, q.question, template=template, max_new_tokens=new_tokens,
                    answer_from="memory").timings["ttft_s"] for _ in range(args.repeats))
    out["ttft_doc_tokens"] = doc_tokens
    out["ttft_median_s"] = ttft
    out["ttft_vs_empty"] = {m: ttft[m] / ttft["empty"] for m in MODES + (PREFILLED,)}
    small = h2mt.build(text, fmt="markdown", kv_store="int8")
    out["index_bytes_per_1k_tokens"] = {
        "memories": 1000 * index.memories.nbytes / doc_tokens,
        "kv_bfloat16": 1000 * index.kv.nbytes / doc_tokens,
        "kv_int8": 1000 * small.kv.nbytes / doc_tokens}
    small_ttft = statistics.median(
        h2mt.answer(small, q.question, template=template, max_new_tokens=new_tokens,
                    answer_from="leaf_kv").timings["ttft_s"] for _ in range(args.repeats))
    out["ttft_median_s"]["leaf_kv_int8"] = small_ttft
    out["targets_met"] = {
        "oracle_leaf_kv_f1_ge_0.95x_text": (ratio["leaf_kv"] or 0) >= 0.95,
        "oracle_memory_kv_f1_ge_0.8x_text": (ratio["memory_kv"] or 0) >= 0.8,
        "oracle_memory_f1_ge_0.6x_text": (ratio["memory"] or 0) >= 0.6,
        "leaf_kv_ttft_8k_le_2x_empty": out["ttft_vs_empty"]["leaf_kv"] <= 2.0,
        "memory_ttft_8k_le_1.5x_empty": out["ttft_vs_empty"]["memory"] <= 1.5,
        "memory_kv_ttft_8k_le_1.5x_empty": out["ttft_vs_empty"]["memory_kv"] <= 1.5}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
