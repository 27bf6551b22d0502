"""How far routing can generalize from frozen node memories: a routing-only probe on the
synthetic manuals, with BM25 over the same leaves beside it.

The probe trains what `encode=cached` trains for routing (the summary prompt `p`, `W_q`, `W_k`)
on the routing loss alone, one training manual (all its questions) per step, and reports
recall@2 on the training and held-out questions, split into single-evidence and two-hop
questions. Node memories are computed once per manual (untrained write tokens); the questions'
keys/values are computed once, so a step runs only the summary token and the scores (~0.2 s).
Two-hop questions have their second gold leaf in another chapter, naming only the bridge
entity, so a router that reads the question once can reach it only by chance.

    python bench/route_probe.py [--train-docs 16] [--steps 800] [--title-position prefix]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from routing_recall import bm25_rank  # noqa: E402  (bench/, the script's own directory)

from h2mt_jax.eval.metrics import leaf_recall  # noqa: E402

QUESTIONS = 16  # question slots per manual (a manual has 9)


def _question_cache(lm, ids: np.ndarray, lengths: np.ndarray):
    """KV cache of the question tokens `[q, T]` with one free slot for the summary token."""
    import jax.numpy as jnp

    from h2mt_jax.generation.decode import prefill_tokens

    _, cache = prefill_tokens(lm.graphdef, lm.params, jnp.asarray(ids), jnp.asarray(lengths),
                              cache_size=ids.shape[1] + 1)
    return cache


def _bm25_recall(examples, tokenizer) -> dict:
    """BM25 (as in bench/routing_recall.py) over each manual's leaf texts."""
    hits = {1: [], 2: []}
    for e in examples:
        texts = [tokenizer.decode(t) for t in e["leaf_tokens"]]
        gold = set(e["gold_leaves"])
        hits[min(len(gold), 2)].append(leaf_recall(gold, bm25_rank(texts, e["question"]), 2))
    return _summary(hits)


def _summary(hits) -> dict:
    both = hits[1] + hits[2]
    return {"recall_at_2": float(np.mean(both)), "one_gold": float(np.mean(hits[1])),
            "two_hop": float(np.mean(hits[2])) if hits[2] else None, "n": len(both)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-docs", type=int, default=16)
    ap.add_argument("--eval-docs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--recall-dim", type=int, default=256)
    ap.add_argument("--title-position", default="prefix", choices=("prefix", "suffix"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from configs.demo import get_config
    from h2mt_jax.hierarchy.loss import route_loss
    from h2mt_jax.hierarchy.route import score_nodes
    from h2mt_jax.hierarchy.tree import Tree
    from h2mt_jax.train.h2mt_qa import H2MTQATask, pad_examples

    c = get_config()
    c.seed = args.seed
    c.data.train_docs, c.data.eval_docs = args.train_docs, args.eval_docs
    c.h2mt.recall_dim, c.h2mt.title_position = args.recall_dim, args.title_position
    task = H2MTQATask(c, progress=False)
    lm, h2 = task.lm, task.h2mt
    tok = lm.tokenizer
    t0 = time.perf_counter()

    def examples(items):
        return [{"ex": e, "doc": e.item.doc_id, "question": e.item.question,
                 "gold_leaves": e.index.leaves_for_spans(e.item.gold_spans or []),
                 "leaf_tokens": e.index.spec.leaf_tokens} for e in task.examples(items)]

    train, held = examples(task.train_items), examples(task.eval_items)
    build_s = time.perf_counter() - t0
    padded = pad_examples([e["ex"] for e in train + held], h2.config)
    for e, p in zip(train + held, padded):
        e["padded"] = p
    leaf_slots = padded[0]["tree"]["leaf_tokens"].shape[0]

    def manuals(exs):
        by = {}
        for e in exs:
            by.setdefault(e["doc"], []).append(e["padded"])
        out = []
        for rows in by.values():
            n = min(len(rows), QUESTIONS)
            rows = (rows * QUESTIONS)[:QUESTIONS]  # fixed slots: one compiled step
            q_len = np.array([r["q_len"] for r in rows], np.int32)
            cache = _question_cache(lm, np.stack([r["q_ids"] for r in rows]), q_len)
            tree = rows[0]["tree"]
            out.append((n, {"mem": jnp.asarray(rows[0]["memories"]),
                            "tree": jax.tree.map(jnp.asarray, tree), "cache": cache,
                            "gold": jnp.asarray(np.stack([r["gold"] for r in rows])),
                            "leaf_ok": tree["leaf_lengths"] > 0}))
        return out

    train_m, held_m = manuals(train), manuals(held)
    fixed = {k: v for k, v in h2.params.items() if k not in ("summary", "w_q", "w_k")}

    def scores(tp, m):
        model = nnx.merge(lm.graphdef, lm.params)
        s0 = tp["summary"]
        x = jnp.broadcast_to(s0[None], (m["cache"].lengths.shape[0], 1, s0.shape[-1]))
        s = model(x, cache=m["cache"])[0][:, 0]
        p = {**fixed, **tp}
        mask = m["tree"]["node_mask"]
        return jax.vmap(lambda si: score_nodes(p, si.astype(jnp.float32), m["mem"], mask))(s)

    def loss(tp, m):
        sc = scores(tp, m)
        tree = Tree(**m["tree"])
        return jax.vmap(lambda s, g: route_loss(s, tree, g))(sc, m["gold"]).mean()

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, args.lr, 20, args.steps),
        weight_decay=args.weight_decay))
    tp = {k: h2.params[k] for k in ("summary", "w_q", "w_k")}
    state = opt.init(tp)
    dev = lambda m: {k: v for k, v in m.items() if k != "leaf_ok"}  # noqa: E731

    @jax.jit
    def step(tp, state, m):
        value, grads = jax.value_and_grad(loss)(tp, m)
        updates, state = opt.update(grads, state, tp)
        return optax.apply_updates(tp, updates), state, value

    score_j = jax.jit(scores)

    def recall(tp, ms) -> dict:
        hits = {1: [], 2: []}
        for n, m in ms:
            sc = np.asarray(score_j(tp, dev(m)))[:, :leaf_slots]
            gold_all = np.asarray(m["gold"])[:, :leaf_slots]
            for i in range(n):
                ranked = np.argsort(-np.where(m["leaf_ok"], sc[i], -np.inf))
                gold = set(np.nonzero(gold_all[i])[0])
                hits[min(len(gold), 2)].append(leaf_recall(gold, ranked, 2))
        return _summary(hits)

    out = {"bench": "route_probe", "args": vars(args), "build_s": build_s,
           "train_questions": len(train), "held_out_questions": len(held),
           "bm25": {"train": _bm25_recall(train, tok), "held_out": _bm25_recall(held, tok)},
           "untrained": {"train": recall(tp, train_m), "held_out": recall(tp, held_m)}}
    rng = np.random.default_rng(args.seed)
    t1 = time.perf_counter()
    for _ in range(args.steps):
        tp, state, _ = step(tp, state, dev(train_m[rng.integers(len(train_m))][1]))
    out["train_s"] = time.perf_counter() - t1
    out["trained"] = {"train": recall(tp, train_m), "held_out": recall(tp, held_m)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
