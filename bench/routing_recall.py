"""Routing recall on HotpotQA (../shared/data/hotpotqa): gold = the supporting-fact passages.

For each record, the ten passages become an H²MT index (one passage per section, sentences as
text); recall@k is the fraction of gold passages among the passages of the top-k routed leaves.
Compared side by side: H²MT beam routing and flat routing with the given (default: untrained)
memory parameters, BM25 over the same leaves, and route=oracle. Prints JSON.

    python bench/routing_recall.py [--limit 100] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def bm25_rank(texts: list[str], question: str) -> list[int]:
    from rank_bm25 import BM25Okapi

    tok = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    scores = BM25Okapi([tok(t) or ["_"] for t in texts]).get_scores(tok(question))
    return sorted(range(len(texts)), key=lambda i: -scores[i])


def passage_recall(titles: list[str | None], ranked: list[int], gold: set[str], k: int) -> float:
    hit = {titles[i] for i in ranked[:k]} & gold
    return len(hit) / len(gold)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--checkpoint", default=None, help="trained H2MT parameters (H2MT.save)")
    ap.add_argument("--ks", default="2,4")
    args = ap.parse_args()

    import h2mt_jax
    from h2mt_jax.data import hotpotqa
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import H2MT

    path = os.path.join(ROOT, "..", "shared", "data", "hotpotqa",
                        "hotpot_dev_distractor_first100.json")
    if not os.path.isfile(path):
        sys.exit(f"{path} is absent: this benchmark needs the shared HotpotQA sample")
    with open(path) as f:
        records = json.load(f)
    records = records if isinstance(records, list) else records["data"]
    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    h2mt = (H2MT.load(args.checkpoint, lm) if args.checkpoint
            else H2MT.create(lm, H2MTConfig(k=max(int(k) for k in args.ks.split(",")))))
    ks = [int(k) for k in args.ks.split(",")]
    kmax = max(ks)
    methods = ("h2mt_beam", "h2mt_flat", "bm25", "oracle")
    sums = {m: {k: 0.0 for k in ks} for m in methods}
    start = time.perf_counter()
    n = 0
    for rec in records[:args.limit]:
        text, outline = hotpotqa.parse_hotpotqa(rec)
        index = h2mt.build(text, outline=outline)
        titles = [index.spec.titles[i] for i in range(index.spec.n_leaves)]
        gold = {t for t in rec["supporting_facts"]["title"]}
        gold_leaves = index.leaves_for_spans(hotpotqa.hotpotqa_supporting_spans(rec, text))
        q = rec["question"]
        ranked = {
            "h2mt_beam": index.leaf_ids(h2mt.route(index, q, k=kmax, route="beam")[0].leaves),
            "h2mt_flat": index.leaf_ids(h2mt.route(index, q, k=kmax, route="flat")[0].leaves),
            "bm25": bm25_rank(index.leaf_texts, q), "oracle": gold_leaves}
        for m in methods:
            for k in ks:
                sums[m][k] += passage_recall(titles, ranked[m], gold, k)
        n += 1
    out = {"bench": "routing_recall", "data": "hotpotqa dev distractor (first records)",
           "records": n, "parameters": args.checkpoint or "untrained (H2MT.create, seed 0)",
           "recall": {m: {f"@{k}": sums[m][k] / n for k in ks} for m in methods},
           "seconds": time.perf_counter() - start}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
