"""Do the memories keep the facts an answer copies? Reconstruction NLL through a checkpoint's
memories, split into the held-out manuals' fact values (names, numbers, part numbers: the
tokens a question's answer is) and every other token of the leaf.

For each checkpoint, the demo's held-out manuals (seed 0, documents 16..19) are cut into leaves
as `H2MT.build` cuts them; each leaf is reconstructed (`configs/memory_pretrain.py`'s
reconstruction cue) from its own memories and from another leaf's, read as `--mode`. Per-token
NLL is averaged over the tokens of fact values found in the leaf (each `Fact.value`, tokenised
after a space, matched in the leaf's token ids) and over the rest. `carried` = other - own:
what the memories hold about those tokens. Teacher forcing: the value's first token is the
one the answer has to produce unprompted; later tokens are partly predictable from it.

    python bench/fact_recall.py --checkpoints smollm2-135m-h2mt,runs/cap_mean_memory/model \\
        --pools write,mean --trainable memory+lora,memory

`--pools` / `--trainable` (one per checkpoint, or one for all; "" keeps the checkpoint's):
the pooling and whether the reader is the checkpoint's adapted decoder ("memory+lora") or the
frozen backbone ("memory"), as the checkpoint was trained. Writes JSON to stdout and `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def value_spans(leaf: list[int], values: list[list[int]]) -> list[tuple[int, int]]:
    """(start, length) of every occurrence in `leaf` of any token sequence of `values`."""
    return [(i, len(v)) for v in values for i in range(len(leaf) - len(v) + 1)
            if leaf[i:i + len(v)] == v]


def fact_probe(checkpoint: str, lm, mode: str, pool: str, trainable: str,
               n_batches: int) -> dict:
    """Mean reconstruction NLL per token (own / other-leaf memories) on fact-value tokens and on
    the other tokens of the held-out manuals' leaves."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs.memory_pretrain import get_config
    from h2mt_jax.data.synthetic import generate_manual, manual_seed
    from h2mt_jax.hierarchy import parse
    from h2mt_jax.hierarchy.memory_loss import READ_MODES, encode_write, models, read_hidden
    from h2mt_jax.train.memory_lm import MemoryLMTask
    from h2mt_jax.train.trainable import lora_scale

    c = get_config()
    c.checkpoint, c.data.sources, c.train.read_modes = checkpoint, "wikitext", mode
    c.train.mem_pool = pool
    c.train.trainable = trainable or c.train.trainable
    mans = [generate_manual(manual_seed(0, i), chapters=4) for i in range(16, 20)]
    docs = [(m.doc_id, m.text, parse.parse_document(m.text, "markdown")) for m in mans]
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, docs))
    tr = task.init(jax.random.PRNGKey(0))
    tok = lm.tokenizer
    values = sorted({f.value for m in mans for f in m.facts})
    value_ids = [tok(" " + v, add_special_tokens=False)["input_ids"] for v in values]
    scale = lora_scale(c.train)

    @jax.jit
    def token_nll(tr, b):
        params = tr["h2mt"]
        encoder, reader = models(tr, task.lm.params, task.lm.graphdef, scale)
        mem, k, v = encode_write(encoder, params, b["leaf"], b["leaf_len"], task.cfg.mem_pool,
                                 task.cfg.mem_layer)
        hidden = read_hidden(reader, params, mode, b["pre"], mem, k, v, reader.embed(b["post"]))
        logp = jax.nn.log_softmax(reader.logits(hidden).astype(jnp.float32), -1)
        lab = b["labels"]
        return -jnp.take_along_axis(logp, jnp.maximum(lab, 0)[..., None], -1)[..., 0]

    batches = [b for b in task.examples(docs, 1) if int(b["objective"][0]) == 0
               and READ_MODES[int(b["mode"][0])] == mode][:n_batches]
    sums = {(kind, mem): [0.0, 0] for kind in ("fact", "rest") for mem in ("own", "other")}
    first = [0.0, 0.0, 0]  # own, other NLL of each value occurrence's first token
    for b in batches:
        other = dict(b, leaf=np.roll(b["leaf"], 1, 0), leaf_len=np.roll(b["leaf_len"], 1, 0))
        nll = {"own": np.asarray(token_nll(tr, b)), "other": np.asarray(token_nll(tr, other))}
        for r in range(len(b["leaf"])):
            leaf = b["leaf"][r, :int(b["leaf_len"][r])].tolist()
            start = int(np.argmax(b["labels"][r] >= 0))  # label of the leaf's first token
            spans = value_spans(leaf, value_ids)
            facts = {i + j for i, n in spans for j in range(n)}
            for p in range(len(leaf)):
                kind = "fact" if p in facts else "rest"
                for mem in ("own", "other"):
                    s = sums[(kind, mem)]
                    s[0] += float(nll[mem][r, start + p])
                    s[1] += 1
            for i, _ in spans:
                first[0] += float(nll["own"][r, start + i])
                first[1] += float(nll["other"][r, start + i])
                first[2] += 1
    out = {}
    for kind in ("fact", "rest"):
        own, oth = (sums[(kind, m)][0] / max(sums[(kind, m)][1], 1) for m in ("own", "other"))
        out[kind] = {"own_nll": own, "other_leaf_nll": oth, "carried_nats": oth - own,
                     "tokens": sums[(kind, "own")][1]}
    n = max(first[2], 1)
    out["fact_first_token"] = {"own_nll": first[0] / n, "other_leaf_nll": first[1] / n,
                               "carried_nats": (first[1] - first[0]) / n, "values": first[2]}
    out["batches"] = len(batches)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="smollm2-135m-h2mt")
    ap.add_argument("--pools", default="", help="mem_pool per checkpoint (or one for all)")
    ap.add_argument("--trainable", default="", help="memory | memory+lora per checkpoint")
    ap.add_argument("--mode", default="memory_kv", choices=("memory", "memory_kv"))
    ap.add_argument("--batches", type=int, default=12, help="batches of 4 leaves")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "fact_recall.json"))
    args = ap.parse_args()
    import h2mt_jax

    ckpts = [x.strip() for x in args.checkpoints.split(",") if x.strip()]

    def per(arg: str) -> list[str]:
        xs = [x.strip() for x in arg.split(",")] if arg else [""]
        if len(xs) not in (1, len(ckpts)):
            raise SystemExit(f"give one value or one per checkpoint ({len(ckpts)}), got {arg!r}")
        return xs * len(ckpts) if len(xs) == 1 else xs

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    result = {"bench": "fact_recall", "mode": args.mode, "points": []}
    for ckpt, pool, trainable in zip(ckpts, per(args.pools), per(args.trainable)):
        t0 = time.perf_counter()
        row = {"checkpoint": ckpt, "mem_pool": pool or "(checkpoint's)",
               "reader": "frozen backbone" if trainable == "memory" else "checkpoint's",
               **fact_probe(ckpt, lm, args.mode, pool, trainable, args.batches),
               "seconds": time.perf_counter() - t0}
        result["points"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
