"""Routing recall of every node score (`h2mt.route_score`) on documents never trained on.

- HotpotQA (../shared/data/hotpotqa, the last 30 of the 100 records by default: the first 70 are
  the training split): the ten passages become an H²MT index (a passage per section, sentences as
  text); recall@k is the fraction of gold (supporting-fact) passages among the passages of the
  top-k routed leaves.
- Held-out synthetic manuals (the demo's: seed 0, documents 16..19): recall@k of the gold leaves,
  split into single-evidence and two-hop questions.
Scores: memory (the learned score; untrained unless --checkpoint), bm25, dense
(all-MiniLM-L6-v2), their per-sentence forms (bm25_sent, dense_sent), fused (weighted min-max sum of bm25 and dense, optionally + memory) and
fused_rrf (reciprocal-rank fusion), each with beam and flat routing, one hop and two (the
second hop's query built three ways, `h2mt.hop_query`, and one gated variant, `h2mt.hop_gate`,
with how often its second hop fired; `fused_2hop_learned_gate` needs a checkpoint with a fitted
gate, `bench/fit_fusion.py --save-into`), each `*_sections` variant with the answer's later slots
going to sections not yet read first (`h2mt.distinct_sections`; the other variants without),
`shipped` (the checkpoint's own routing); BM25 over the leaves (`rag_bm25`'s ranking) and the oracle
beside them. Every k routes on its own (a beam of width k). HotpotQA is also split by question
type (bridge, comparison). Also: routing latency (question encoding + scoring + beam) at 2k and
32k document tokens, and on the 32k document the time to first token of a few routers' answers
(routing included) in the same run. Prints JSON.

    python bench/routing_recall.py [--first 70] [--limit 30] [--checkpoint DIR]
                                   [--index-cache DIR]   # reuse built indexes on the next run
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

ONE_HOP = {"hops": 1, "fuse": "weighted", "w_bm25": 1.0, "w_dense": 1.0, "w_memory": 0.0}
RRF_2HOP = {"route_score": "fused", "fuse": "rrf", "hops": 2}
SCORES = {"memory": {"route_score": "memory"}, "bm25": {"route_score": "bm25"},
          "dense": {"route_score": "dense"}, "fused": {"route_score": "fused"},
          "fused_rrf": {"route_score": "fused", "fuse": "rrf"},
          "fused_memory": {"route_score": "fused", "w_memory": 0.5},
          "bm25_2hop": {"route_score": "bm25", "hops": 2},
          "fused_2hop": {"route_score": "fused", "hops": 2},
          "fused_rrf_2hop": RRF_2HOP,
          "fused_rrf_2hop_sentence": {**RRF_2HOP, "hop_query": "sentence"},
          "fused_rrf_2hop_leaf": {**RRF_2HOP, "hop_query": "leaf"},
          "fused_rrf_2hop_gate": {**RRF_2HOP, "hop_gate": 0.3},
          "fused_fit": {"route_score": "fused", "w_dense": 1.5},
          "fused_fit_2hop": {"route_score": "fused", "w_dense": 1.5, "hops": 2},
          "fused_2hop_sum": {"route_score": "fused", "hops": 2, "hop_merge": "sum"},
          "fused_fit_2hop_sum": {"route_score": "fused", "w_dense": 1.5, "hops": 2,
                                 "hop_merge": "sum"},
          "bm25_sent": {"route_score": "bm25_sent"}, "dense_sent": {"route_score": "dense_sent"},
          "fused_all": {"route_score": "fused", "w_bm25_sent": 1.0, "w_dense_sent": 1.0},
          "fused_all_2hop": {"route_score": "fused", "w_bm25_sent": 1.0, "w_dense_sent": 1.0,
                             "hops": 2},
          "fused_sent_2hop": {"route_score": "fused", "w_bm25": 0.0, "w_dense": 0.0,
                              "w_bm25_sent": 1.0, "w_dense_sent": 1.0, "hops": 2},
          "fused_2hop_learned_gate": {"route_score": "fused", "hops": 2, "hop_gate": 0.5,
                                      "hop_gate_score": "learned"},
          "fused_sent": {"route_score": "fused", "w_bm25": 0.0, "w_dense": 0.0,
                         "w_bm25_sent": 1.0, "w_dense_sent": 1.0}}
# the same with the answer's later slots going to sections not yet read first (hops.pick_leaves)
SCORES.update({f"{name}_sections": {**SCORES[name], "distinct_sections": True} for name in (
    "bm25", "dense", "fused", "bm25_sent", "dense_sent", "fused_sent", "bm25_2hop", "fused_2hop",
    "fused_sent_2hop")})
SCORES = {name: {**ONE_HOP, "hop_query": "bridge", "hop_gate": 0.0, "hop_merge": "second",
                 "hop_gate_score": "margin", "w_bm25_sent": 0.0, "w_dense_sent": 0.0,
                 "distinct_sections": False, **kw}
          for name, kw in SCORES.items()}  # explicit: nothing is taken from a checkpoint
SCORES["shipped"] = {}  # the checkpoint's own routing (--checkpoint), whatever it is


def bm25_rank(texts: list[str], question: str) -> list[int]:
    from rank_bm25 import BM25Okapi

    from h2mt_jax.data.terms import terms

    scores = BM25Okapi([terms(t) or ["_"] for t in texts]).get_scores(terms(question))
    return sorted(range(len(texts)), key=lambda i: -scores[i])


def passage_recall(titles: list[str | None], ranked: list[int], gold: set[str], k: int) -> float:
    hit = {titles[i] for i in ranked[:k]} & gold
    return len(hit) / len(gold)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=70, help="HotpotQA records to skip (training)")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--checkpoint", default=None, help="trained H2MT parameters (H2MT.save)")
    ap.add_argument("--ks", default="1,2,4")
    ap.add_argument("--scores", default=",".join(SCORES))
    ap.add_argument("--manuals", type=int, default=4)
    ap.add_argument("--latency", default="2048,32768")
    ap.add_argument("--ttft", default="fused,fused_2hop,fused_fit_2hop,fused_rrf",
                    help="routers whose answer TTFT is timed on the largest latency document")
    ap.add_argument("--index-cache", default=None,
                    help="keep built indexes here and reuse them on the next run")
    args = ap.parse_args()

    import numpy as np

    import h2mt_jax
    from h2mt_jax.data import hotpotqa
    from h2mt_jax.data.items import synthetic_items
    from h2mt_jax.eval.metrics import leaf_recall
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import H2MT

    ks = [int(k) for k in args.ks.split(",")]
    kmax = max(ks)
    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    base = (H2MT.load(args.checkpoint, lm) if args.checkpoint
            else H2MT.create(lm, H2MTConfig(k=kmax)))
    routers = {}
    for name in args.scores.split(","):
        routers[name] = H2MT(lm, base.config.replace(**SCORES[name]), base.params, base.lora,
                             base.lora_scale, base.hop_gate)
        routers[name]._embedder = base.embedder if name != "memory" else None
    methods = [f"{s}_{r}" for s in routers for r in ("beam", "flat")] + ["bm25_leaves", "oracle"]

    def ranked_by(index, question, gold_leaves):
        """{method: {k: the leaves it selects when asked for k}}: every k routes on its own
        (a beam of width k; with hops=2 the second hop's share depends on k)."""
        out = {}
        for s, h in routers.items():
            for r in ("beam", "flat"):
                out[f"{s}_{r}"] = {}
                for k in ks:
                    route, timings = h.route(index, question, k=k, route=r)
                    out[f"{s}_{r}"][k] = index.leaf_ids(route.leaves)
                    if h.config.hops == 2 and r == "beam" and k == 2:
                        fired[s].append(timings.get("hops", 1) == 2)
        bm25 = bm25_rank(index.leaf_texts, question)
        out["bm25_leaves"] = {k: bm25 for k in ks}
        out["oracle"] = {k: gold_leaves for k in ks}
        return out

    def build(key, text, **kw):
        """An index, kept under --index-cache (keyed by the parameters) to rerun the bench cheaply."""
        if not args.index_cache:
            return base.build(text, **kw)
        path = os.path.join(args.index_cache, (args.checkpoint or "untrained").replace("/", "_"),
                            key)
        if os.path.isdir(path):
            return base.load_index(path, lm)[1]
        index = base.build(text, **kw)
        base.save_index(index, path)
        return index

    fired = {s: [] for s in routers}  # whether the second hop fired (hops=2, beam, k=2)
    out = {"bench": "routing_recall", "parameters": args.checkpoint or "untrained (seed 0)",
           "scores": {s: SCORES[s] for s in routers}, "command": " ".join(sys.argv)}
    path = os.path.join(ROOT, "..", "shared", "data", "hotpotqa",
                        "hotpot_dev_distractor_first100.json")
    if os.path.isfile(path):
        with open(path) as f:
            records = json.load(f)[args.first:args.first + args.limit]
        sums = {m: {k: [] for k in ks} for m in methods}
        by_type = {m: {} for m in methods}  # HotpotQA's question types: bridge, comparison
        t0 = time.perf_counter()
        for n, rec in enumerate(records, start=args.first):
            text, outline = hotpotqa.parse_hotpotqa(rec)
            index = build(f"hotpotqa-{n}", text, outline=outline)
            titles = [index.spec.titles[i] for i in range(index.spec.n_leaves)]
            gold = set(rec["supporting_facts"]["title"])
            gold_leaves = index.leaves_for_spans(hotpotqa.hotpotqa_supporting_spans(rec, text))
            for m, ranked in ranked_by(index, rec["question"], gold_leaves).items():
                for k in ks:
                    sums[m][k].append(passage_recall(titles, ranked[k], gold, k))
                    by_type[m].setdefault(rec.get("type", "unknown"), {}).setdefault(
                        k, []).append(sums[m][k][-1])
        out["hotpotqa"] = {"records": f"{args.first}..{args.first + len(records) - 1}",
                           "recall": {m: {f"@{k}": float(np.mean(v[k])) for k in ks}
                                      for m, v in sums.items()},
                           "recall_by_type": {m: {t: {f"@{k}": float(np.mean(x[k])) for k in ks}
                                                  | {"n": len(x[ks[0]])}
                                                  for t, x in v.items()}
                                              for m, v in by_type.items()},
                           "seconds": time.perf_counter() - t0}
        out["hotpotqa"]["second_hop_fired"] = {s: float(np.mean(v)) for s, v in fired.items() if v}
        for v in fired.values():
            v.clear()
    else:
        out["hotpotqa"] = f"skipped: {path} is absent"

    items = synthetic_items(0, args.manuals, 16, chapters=4)
    rows = {m: {"one": {k: [] for k in ks}, "multi": {k: [] for k in ks}} for m in methods}
    indexes = {}
    for it in items:
        if it.doc_id not in indexes:
            indexes[it.doc_id] = build(f"manual-{it.doc_id}", it.context, fmt="markdown")
        index = indexes[it.doc_id]
        gold = set(index.leaves_for_spans(it.gold_spans))
        kind = "one" if len(gold) == 1 else "multi"
        for m, ranked in ranked_by(index, it.question, sorted(gold)).items():
            for k in ks:
                rows[m][kind][k].append(leaf_recall(gold, ranked[k], k))
    out["manuals"] = {"questions": len(items), "recall": {
        m: {kind: {f"@{k}": float(np.mean(v[kind][k])) for k in ks} | {"n": len(v[kind][ks[0]])}
            for kind in ("one", "multi")} | {
            "all@2": float(np.mean(v["one"][2] + v["multi"][2])) if 2 in ks else None}
        for m, v in rows.items()},
        "second_hop_fired": {s: float(np.mean(v)) for s, v in fired.items() if v}}

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from ttft import make_document

    def median_s(fn, repeats=5):
        fn()  # compiles; dense vectors computed once
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    latency, ttft = {}, {}
    sizes = [int(x) for x in args.latency.split(",") if x]
    for n in sizes:
        text, q = make_document(lm, n)
        index = build(f"latency-{n}", text, fmt="markdown")
        for s, h in routers.items():
            latency.setdefault(s, {})[str(n)] = median_s(lambda: h.route(index, q.question, k=2))
        if n == max(sizes):  # time to first token, routing included, in the same run
            for s in args.ttft.split(","):
                if s in routers:
                    ttft[s] = median_s(lambda: routers[s].answer(index, q.question, k=2,
                                                                 max_new_tokens=1))
            out["ttft_doc_tokens"] = n
    out["route_latency_s"] = latency  # question encoding + scoring + beam, k=2
    out["ttft_s"] = ttft
    out["route_fraction_of_ttft"] = {s: latency[s][str(max(sizes))] / t for s, t in ttft.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
