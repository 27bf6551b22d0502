"""Fits the routing that needs no gradient (the fused text scores' weights and rule, one hop and
two, `train/fusion.py`) and the learned hop gate (`train/hop_gate.py`) on training questions,
and measures them on held-out ones. Prints JSON; `--save-into DIR` writes the chosen routing and
the gate into an H2MT checkpoint.

Training: the first 70 shared HotpotQA records and the synthetic manuals of seed 0 numbered
0..15 (the demo's training documents) and 100..123 (the shipped checkpoint's QA training
documents). Held out: HotpotQA's last 30 records and manuals 16..19 (the demo's evaluation
documents, as in `bench/routing_recall.py`). Leaves are cut exactly as `H2MT.build` cuts them
for the checkpoint's build settings (no backbone pass: the text scores read text only);
rankings are flat over the leaves and recall counts gold leaves (HotpotQA: the leaves holding a
supporting fact).

The gate's label: the question's evidence spans more than one leaf. It fires at probability
>= 0.5. It is saved in the checkpoint either way, and switched on (`hop_gate=0.5`,
`hop_gate_score="learned"`) only when gating raises the training questions' recall over two hops
for every question; otherwise `hop_gate=0` and a user turns it on with `--config.h2mt.hop_gate=0.5`.

    python bench/fit_fusion.py [--k 2] [--checkpoint smollm2-135m-h2mt] [--save-into DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GATE = 0.5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt",
                    help="whose build settings cut the leaves")
    ap.add_argument("--train-hotpotqa", type=int, default=70)
    ap.add_argument("--manuals", default="0:16,100:124", help="training manuals a:b,... (seed 0)")
    ap.add_argument("--test-manuals", default="16:20")
    ap.add_argument("--save-into", default=None,
                    help="an H2MT checkpoint directory to write the fitted routing and gate into")
    args = ap.parse_args()

    import numpy as np
    from tqdm import tqdm

    from h2mt_jax.data import hotpotqa
    from h2mt_jax.data.synthetic import generate_manual, manual_seed
    from h2mt_jax.embedder import SentenceEmbedder
    from h2mt_jax.hierarchy import parse
    from h2mt_jax.hierarchy.build import build_spec
    from h2mt_jax.hierarchy.config import H2MTConfig
    from h2mt_jax.hierarchy.h2mt import FORMAT, resolve_checkpoint
    from h2mt_jax.hierarchy.hops import gate_probability
    from h2mt_jax.hierarchy.index import Index
    from h2mt_jax.hierarchy.node_scores import leaf_sentences, leaf_texts
    from h2mt_jax.io import read_meta
    from h2mt_jax.train.fusion import (fit_fusion, leaf_sample, recall_at, routed_leaves,
                                       weight_grid)
    from h2mt_jax.train.hop_gate import fit_hop_gate
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
        return doc, embedder.embed(leaf_texts(doc)), embedder.embed(leaf_sentences(doc)[0])

    def hotpot(records):
        out = []
        for rec in tqdm(records, desc="hotpotqa", leave=False):
            text, outline = hotpotqa.parse_hotpotqa(rec)
            doc, vecs, svecs = document(text, outline)
            gold = doc.leaves_for_spans(hotpotqa.hotpotqa_supporting_spans(rec, text))
            if gold:
                out.append(leaf_sample(doc, rec["question"], gold, embedder, vecs, svecs))
        return out

    def manuals(ranges):
        out = []
        numbers = [n for r in ranges.split(",") for n in range(*map(int, r.split(":")))]
        for n in tqdm(numbers, desc="manuals", leave=False):
            m = generate_manual(manual_seed(0, n), chapters=4)
            text = parse.clean_text(m.text)
            doc, vecs, svecs = document(text, parse.parse_document(text, "markdown"))
            out += [leaf_sample(doc, q.question, doc.leaves_for_spans(q.gold_spans), embedder,
                                vecs, svecs) for q in m.questions]
        return out

    path = os.path.join(ROOT, "..", "shared", "data", "hotpotqa",
                        "hotpot_dev_distractor_first100.json")
    with open(path) as f:
        records = json.load(f)
    train = hotpot(records[:args.train_hotpotqa]) + manuals(args.manuals)
    tests = {"hotpotqa": hotpot(records[args.train_hotpotqa:])}
    test_manuals = manuals(args.test_manuals)
    tests["manuals_one"] = [s for s in test_manuals if len(s.gold) == 1]
    tests["manuals_multi"] = [s for s in test_manuals if len(s.gold) > 1]
    tests["manuals_all"] = test_manuals

    grid = weight_grid()
    one_hop, rows1 = fit_fusion(train, k=args.k, hops=1, candidates=grid)
    two_hop, rows2 = fit_fusion(train, k=args.k, hops=2, candidates=grid)

    def qvec(s):
        return embedder.embed([s.question])[0]

    gate = fit_hop_gate(np.stack([qvec(s) for s in train]),
                        np.asarray([len(s.gold) > 1 for s in train], np.float64))

    def fires(s):
        return gate_probability(gate, qvec(s)) >= GATE

    def gated(weights, how):
        return lambda s: routed_leaves(s, weights, how, args.k, 2 if fires(s) else 1)

    def plain(weights, how, hops):
        return lambda s: routed_leaves(s, weights, how, args.k, hops)

    routers = {"bm25": plain({"bm25": 1.0}, "weighted", 1),
               "dense": plain({"dense": 1.0}, "weighted", 1),
               "fused_1_1": plain({"bm25": 1.0, "dense": 1.0}, "weighted", 1),
               "fused_1_1_2hop": plain({"bm25": 1.0, "dense": 1.0}, "weighted", 2),
               "fitted_1hop": plain(one_hop["weights"], one_hop["fuse"], 1),
               "fitted_2hop": plain(two_hop["weights"], two_hop["fuse"], 2),
               "fitted_2hop_gated": gated(two_hop["weights"], two_hop["fuse"])}
    held = {name: {split: float(np.mean([recall_at(s, fn(s), args.k) for s in samples]))
                   for split, samples in tests.items()} for name, fn in routers.items()}
    fire_rate = {split: float(np.mean([fires(s) for s in samples]))
                 for split, samples in tests.items()}
    train_fire = {"needs_two": float(np.mean([fires(s) for s in train if len(s.gold) > 1])),
                  "needs_one": float(np.mean([fires(s) for s in train if len(s.gold) == 1]))}
    train_gated = float(np.mean([recall_at(s, gated(two_hop["weights"], two_hop["fuse"])(s),
                                           args.k) for s in train]))
    use_gate = train_gated > two_hop["recall"]
    out = {"bench": "fit_fusion", "k": args.k, "command": " ".join(sys.argv),
           "train_questions": len(train),
           "best_one_hop": one_hop, "best_two_hop": two_hop,
           "train_recall_two_hop_gated": train_gated, "gate_threshold": GATE,
           "gate_used": use_gate,
           "gate_fires_train": train_fire, "gate_fires_held_out": fire_rate,
           "held_out_flat_recall": held,
           "held_out_questions": {k: len(v) for k, v in tests.items()},
           "grid_one_hop": rows1, "grid_two_hop": rows2}
    if args.save_into:
        import h2mt_jax
        from h2mt_jax.hierarchy.h2mt import H2MT

        h = H2MT.load(args.save_into, h2mt_jax.load_lm("smollm2-135m-instruct"))
        w = two_hop["weights"]
        h = h.with_config(route_score="fused", fuse=two_hop["fuse"], hops=2,
                          w_bm25=w.get("bm25", 0.0), w_dense=w.get("dense", 0.0),
                          w_bm25_sent=w.get("bm25_sent", 0.0),
                          w_dense_sent=w.get("dense_sent", 0.0), w_memory=0.0,
                          hop_gate=GATE if use_gate else 0.0, hop_gate_score="learned")
        h.hop_gate = gate
        h.save(args.save_into)
        out["saved_into"] = args.save_into
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
