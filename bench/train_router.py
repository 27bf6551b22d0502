"""Contrastive training of the learned routing score across documents
(`h2mt_jax/train/contrastive.py`) and its recall before and after, on documents never trained
on. Prints JSON; writes the loss curve as a PNG beside `--out`; `--save-into DIR` writes the
trained projections into an H2MT checkpoint.

Training: the first 70 shared HotpotQA records and the synthetic manuals of seed 0 numbered
0..15 (the demo's training documents). Held out: HotpotQA's last 30 records and manuals 16..19
(the demo's evaluation documents). Leaves are cut as the checkpoint's `build` cuts them; their
memories come from the checkpoint's leaf pass (mean over the m vectors: what the score reads).
Recall@2 is flat over the leaves and counts gold leaves, for the learned score alone and as a
residual (weight 0.5) of the checkpoint's fused text scores.

    python bench/train_router.py [--checkpoint smollm2-135m-h2mt] [--steps 300]
                                 [--out bench/results/train_router.json] [--save-into DIR]
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
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hard", type=int, default=8, help="BM25-mined negatives per question")
    ap.add_argument("--train-hotpotqa", type=int, default=70)
    ap.add_argument("--manuals", default="0:16")
    ap.add_argument("--test-manuals", default="16:20")
    ap.add_argument("--out", default=None, help="also write the JSON here (and a PNG beside it)")
    ap.add_argument("--save-into", default=None)
    args = ap.parse_args()

    import numpy as np
    from tqdm import tqdm

    import h2mt_jax
    from h2mt_jax.data import hotpotqa
    from h2mt_jax.data.synthetic import generate_manual, manual_seed
    from h2mt_jax.hierarchy import parse
    from h2mt_jax.hierarchy.build import build_spec
    from h2mt_jax.hierarchy.h2mt import H2MT
    from h2mt_jax.hierarchy.index import Index
    from h2mt_jax.hierarchy.node_scores import leaf_sentences, leaf_texts
    from h2mt_jax.train.contrastive import fit_contrastive, question_features
    from h2mt_jax.train.fusion import fused_total, text_scores

    t0 = time.perf_counter()
    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    h = H2MT.load(args.checkpoint, lm)
    cfg = h.config
    text_weights = dict(kind for kind in cfg.score_weights() if kind[0] != "memory")

    def documents(which: str):
        """[(doc id, doc, leaf keys [n, d], dense vectors, [(question, gold leaves)])]."""
        out = []
        if which.startswith("hotpotqa"):
            path = os.path.join(ROOT, "..", "shared", "data", "hotpotqa",
                                "hotpot_dev_distractor_first100.json")
            with open(path) as f:
                records = json.load(f)
            lo, hi = ((0, args.train_hotpotqa) if which == "hotpotqa_train"
                      else (args.train_hotpotqa, len(records)))
            sources = []
            for n in range(lo, hi):
                text, outline = hotpotqa.parse_hotpotqa(records[n])
                sources.append((f"hotpotqa-{n}", text, outline, [
                    (records[n]["question"], hotpotqa.hotpotqa_supporting_spans(records[n], text))]))
        else:
            ranges = args.manuals if which == "manuals_train" else args.test_manuals
            sources = []
            for n in [i for r in ranges.split(",") for i in range(*map(int, r.split(":")))]:
                m = generate_manual(manual_seed(0, n), chapters=4)
                text = parse.clean_text(m.text)
                sources.append((f"manual-{n}", text, parse.parse_document(text, "markdown"),
                                [(q.question, q.gold_spans) for q in m.questions]))
        for doc_id, text, outline, questions in tqdm(sources, desc=which, leave=False):
            spec = build_spec(text, outline, h.tokenizer, cfg.build)
            doc = Index(text, spec, None, None, cfg.build)
            keys = np.asarray(h._leaf_memories(spec.leaf_tokens)).mean(1)
            vecs = (h.embedder.embed(leaf_texts(doc)), h.embedder.embed(leaf_sentences(doc)[0]))
            qs = [(q, doc.leaves_for_spans(spans)) for q, spans in questions]
            out.append((doc_id, doc, keys, vecs, [(q, g) for q, g in qs if g]))
        return out

    summaries = {}  # question -> summary vector: training moves only w_q, w_k, never s

    def summary(q):
        if q not in summaries:
            ids = h.tokenizer(q, add_special_tokens=False)["input_ids"]
            summaries[q] = np.asarray(h.summary_vector(ids))
        return summaries[q]

    def recall(params, docs, residual: float | None) -> float:
        """Flat recall@2: the learned score alone (residual 0), the text scores alone (None), or
        the text scores plus `residual` times the normalised learned score."""
        hits = []
        dh = params["w_q"].shape[1]
        for _, doc, keys, vecs, questions in docs:
            k_proj = keys @ np.asarray(params["w_k"])
            for q, gold in questions:
                mem = k_proj @ (summary(q) @ np.asarray(params["w_q"]))
                mem = mem / np.sqrt(dh)
                if residual is None or residual > 0:
                    scores = text_scores(doc, q, h.embedder, *vecs) | {"memory": mem}
                    mem = fused_total(scores, {**text_weights, "memory": residual or 0.0},
                                      "weighted")
                top = set(np.argsort(-mem, kind="stable")[:2].tolist())
                hits.append(len(top & set(gold)) / len(set(gold)))
        return float(np.mean(hits))

    train_docs = documents("hotpotqa_train") + documents("manuals_train")
    test = {"hotpotqa": documents("hotpotqa_test"), "manuals": documents("manuals_test")}
    features = [question_features(h, doc, doc_id, keys, q, gold, args.hard)
                for doc_id, doc, keys, _, qs in tqdm(train_docs, desc="features", leave=False)
                for q, gold in qs]
    t_feat = time.perf_counter() - t0

    def measure(params):
        return {split: {"memory": recall(params, docs, 0.0),
                        "fused+memory_0.5": recall(params, docs, 0.5),
                        "fused": recall(params, docs, None)}
                for split, docs in test.items()}

    before = measure(h.params)
    trained, curve = fit_contrastive(h.params, features, steps=args.steps, batch=args.batch,
                                     lr=args.lr)
    after = measure(trained)
    out = {"bench": "train_router", "command": " ".join(sys.argv),
           "checkpoint": args.checkpoint, "train_questions": len(features),
           "train_documents": len(train_docs), "steps": args.steps, "batch": args.batch,
           "lr": args.lr, "hard_negatives": args.hard, "text_weights": text_weights,
           "held_out_recall_at_2": {"before": before, "after": after},
           "loss_first_10": float(np.mean(curve[:10])), "loss_last_10": float(np.mean(curve[-10:])),
           "curve": curve, "feature_s": t_feat, "seconds": time.perf_counter() - t0}
    if args.save_into:
        h.params = trained
        h.save(args.save_into)
        out["saved_into"] = args.save_into
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(curve)
        ax.set_xlabel("step")
        ax.set_ylabel("contrastive loss")
        ax.set_title("learned routing score, trained across documents")
        fig.tight_layout()
        fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=120)


if __name__ == "__main__":
    main()
