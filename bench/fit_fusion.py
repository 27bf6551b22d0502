"""Fits the fused routing score's weights (`h2mt.fuse`, `w_bm25`, `w_dense`;
`h2mt_jax/train/fusion.py`) on training questions and measures them on held-out ones. Prints JSON.

Training: the first 70 shared HotpotQA records and the synthetic manuals of seed 0 numbered
0..15 (the demo's training range). Held out: HotpotQA's last 30 records and manuals 16..19 (the
demo's evaluation documents). Leaves are cut exactly as `H2MT.build` cuts them for the shipped
checkpoint's build settings (no backbone pass: the lexical and dense scores read text only);
rankings are flat over the leaves.

    python bench/fit_fusion.py [--k 2] [--checkpoint smollm2-135m-h2mt]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt",
                    help="whose build settings cut the leaves")
    ap.add_argument("--train-hotpotqa", type=int, default=70)
    ap.add_argument("--manuals", default="0:16", help="training manuals a:b (seed 0)")
    ap.add_argument("--test-manuals", default="16:20")
    args = ap.parse_args()

    import numpy as np

    from h2mt_jax.data import hotpotqa
    from h2mt_jax.data.synthetic import generate_manual
    from h2mt_jax.embedder import SentenceEmbedder
    from h2mt_jax.hierarchy import parse
    from h2mt_jax.hierarchy.build import build_spec
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import FORMAT, resolve_checkpoint
    from h2mt_jax.hierarchy.index import Index
    from h2mt_jax.io import read_meta
    from h2mt_jax.hierarchy.node_scores import leaf_texts
    from h2mt_jax.train.fusion import fit_fusion, fused_ranking, leaf_sample, recall_at
    from h2mt_jax.weights import load_tokenizer, resolve

    t0 = time.perf_counter()
    cfg = H2MTConfig.from_dict(read_meta(os.path.join(resolve_checkpoint(args.checkpoint),
                                                      "h2mt.json"), FORMAT, "an H2MT checkpoint")
                               ["config"])
    tokenizer = load_tokenizer(resolve("smollm2-135m-instruct"))
    embedder = SentenceEmbedder.load()

    def document(text, outline):
        spec = build_spec(text, outline, tokenizer, cfg.build)
        doc = Index(text, spec, None, None, cfg.build)  # leaves only: no tree, no memories
        return doc, embedder.embed(leaf_texts(doc))

    def hotpot(records):
        out = []
        for rec in records:
            text, outline = hotpotqa.parse_hotpotqa(rec)
            doc, vecs = document(text, outline)
            gold = doc.leaves_for_spans(hotpotqa.hotpotqa_supporting_spans(rec, text))
            if gold:
                out.append(leaf_sample(doc, rec["question"], gold, embedder, vecs))
        return out

    def manuals(a, b):
        out = {"one": [], "multi": []}
        for n in range(a, b):
            m = generate_manual(n, chapters=4)
            text = parse.clean_text(m.text)
            doc, vecs = document(text, parse.parse_document(text, "markdown"))
            for q in m.questions:
                gold = doc.leaves_for_spans(q.gold_spans)
                out["one" if len(gold) == 1 else "multi"].append(
                    leaf_sample(doc, q.question, gold, embedder, vecs))
        return out

    path = os.path.join(ROOT, "..", "shared", "data", "hotpotqa",
                        "hotpot_dev_distractor_first100.json")
    with open(path) as f:
        records = json.load(f)
    a, b = (int(x) for x in args.manuals.split(":"))
    ta, tb = (int(x) for x in args.test_manuals.split(":"))
    train_m = manuals(a, b)
    train = hotpot(records[:args.train_hotpotqa]) + train_m["one"] + train_m["multi"]
    best, table = fit_fusion(train, k=args.k)
    tests = {"hotpotqa": hotpot(records[args.train_hotpotqa:])} | {
        f"manuals_{kind}": v for kind, v in manuals(ta, tb).items()}
    candidates = {"fitted": ({"bm25": best["w_bm25"], "dense": best["w_dense"]}, best["fuse"]),
                  "bm25": ({"bm25": 1.0}, "weighted"), "dense": ({"dense": 1.0}, "weighted"),
                  "fused_1_1": ({"bm25": 1.0, "dense": 1.0}, "weighted"),
                  "rrf_1_1": ({"bm25": 1.0, "dense": 1.0}, "rrf")}
    held = {name: {split: float(np.mean([recall_at(s, fused_ranking(s, w, how), args.k)
                                         for s in samples]))
                   for split, samples in tests.items()}
            for name, (w, how) in candidates.items()}
    print(json.dumps({"bench": "fit_fusion", "k": args.k, "command": " ".join(sys.argv),
                      "train_questions": len(train), "best": best, "grid": table,
                      "held_out_flat_recall": held,
                      "held_out_questions": {k: len(v) for k, v in tests.items()},
                      "seconds": time.perf_counter() - t0}, indent=1))


if __name__ == "__main__":
    main()
