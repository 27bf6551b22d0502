"""How much of its own leaf does a memory carry? For each checkpoint, held-out leaves are
reconstructed (and the next leaf predicted) through the memories of (a) the leaf itself, (b)
another leaf of the same batch, (c) an empty leaf; the NLL differences per target token say how
much leaf-specific information the memories hold (`other - own`, in nats per token; 0 = none:
the reader answers from its language prior alone).

Readings "memory" (vectors as input embeddings) and "memory_kv" (write tokens' keys/values) are
probed with the memory pretraining loss (`hierarchy.memory_loss.pretrain_loss`, cue "Repeat the
text word for word" / "Continue the text") on documents never trained on:
- `wikitext`: the last 4 articles of the shared WikiText-2 file (memory pretraining's held-out);
- `manuals`: the demo's held-out synthetic manuals (seed 0, documents 16..19).

    python bench/memory_probe.py [--checkpoints smollm2-135m-h2mt,runs/x/model] [--batches 24]

Writes JSON to stdout and `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def documents(source: str, data) -> list[tuple]:
    """Held-out (doc_id, text, outline) documents of a probe source."""
    from h2mt_jax.hierarchy import parse
    from h2mt_jax.train.memory_lm import pretrain_documents

    if source == "wikitext":
        return pretrain_documents(data)[1]
    if source == "manuals":
        from h2mt_jax.data.synthetic import generate_manual, manual_seed

        mans = [generate_manual(manual_seed(0, i), chapters=4) for i in range(16, 20)]
        return [(m.doc_id, m.text, parse.parse_document(m.text, "markdown")) for m in mans]
    raise SystemExit(f"unknown source {source!r} (wikitext, manuals)")


def probe(checkpoint: str, source: str, n_batches: int, lm, docs=None, modes=None,
          pool: str = "", trainable: str = "") -> dict:
    """Mean NLL per (reading, objective) with own / other / empty memories, on the held-out
    documents of `source` (or on `docs`, (doc_id, text, outline) tuples); `modes`: the readings
    probed (default both); `pool`: the memories' `mem_pool` (default the checkpoint's);
    `trainable` "memory": read with the frozen backbone, not the checkpoint's decoder adapters."""
    import jax
    import numpy as np

    from configs.memory_pretrain import get_config
    from h2mt_jax.hierarchy.memory_loss import READ_MODES
    from h2mt_jax.train.memory_lm import MemoryLMTask

    c = get_config()
    c.checkpoint, c.data.sources = checkpoint, "wikitext"
    if modes:
        c.train.read_modes = modes
    c.train.mem_pool = pool
    c.train.trainable = trainable or c.train.trainable
    docs = docs if docs is not None else documents(source, c.data)
    task = MemoryLMTask(c, lm=lm, progress=False, documents=(docs, docs))
    trainable = task.init(jax.random.PRNGKey(0))
    batches = task.examples(docs, 1)[:n_batches]
    loss = jax.jit(lambda tr, b: task.loss(tr, task.lm.params, b)[0])
    rows: dict[str, list] = {}
    for b in batches:
        name = f"{READ_MODES[int(b['mode'][0])]}_{('recon', 'cont')[int(b['objective'][0])]}"
        other = dict(b, leaf=np.roll(b["leaf"], 1, 0), leaf_len=np.roll(b["leaf_len"], 1, 0))
        empty = dict(b, leaf=np.zeros_like(b["leaf"]), leaf_len=np.ones_like(b["leaf_len"]))
        rows.setdefault(name, []).append([float(loss(trainable, x)) for x in (b, other, empty)])
    out = {}
    for name, v in sorted(rows.items()):
        own, oth, emp = np.mean(v, axis=0)
        out[name] = {"own_nll": own, "other_leaf_nll": oth, "empty_leaf_nll": emp,
                     "carried_nats": oth - own, "batches": len(v)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="smollm2-135m-h2mt")
    ap.add_argument("--sources", default="wikitext,manuals")
    ap.add_argument("--batches", type=int, default=24, help="batches of 4 leaves per source")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "memory_probe.json"))
    args = ap.parse_args()
    import h2mt_jax

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    result = {"bench": "memory_probe", "batch_size": 4, "points": []}
    for ckpt in [x.strip() for x in args.checkpoints.split(",") if x.strip()]:
        for source in [x.strip() for x in args.sources.split(",") if x.strip()]:
            t0 = time.perf_counter()
            row = {"checkpoint": ckpt, "source": source, **probe(ckpt, source, args.batches, lm),
                   "seconds": time.perf_counter() - t0}
            result["points"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
