"""How much of its own leaf does a memory carry as memory pretraining goes on, and does it
generalise? One stage-1 run per setting, probed on the leaves it trains on and on held-out ones.

Starts from a checkpoint (default: the shipped one) and trains `--read-modes` (default
`memory_kv`) with reconstruction and continuation (`configs/memory_pretrain.py`, constant lr) on
`--manuals` synthetic manuals of pretraining seed 1, with the leaves' memories made by
`--mem-pool` (write tokens or mean-pooled runs) and `--trainable` parameters ("memory+lora": the
decoder adapts too; "memory": the decoder stays the frozen backbone, as in ICAE and
500xCompressor, so that only the memories can carry a leaf). After each step count of `--steps`
(the run resumes from its own checkpoints), `bench/memory_probe.py`'s probe measures own /
other-leaf / empty-leaf NLL per target token on
- `train`: leaves trained on;
- `held_out`: the demo's held-out manuals (seed 0, documents 16..19).
`carried_nats` = other-leaf NLL - own NLL: the leaf-specific information the memories hold. A
decoder that memorises the training leaves lowers `own` and `other` alike: carried nats on the
training leaves separate memory from memorisation.

    python bench/memory_capacity.py --manuals 40 --mem-pool mean --trainable memory \
        --steps 50,100 --runs runs/cap_mean_frozen --out bench/results/memory_capacity.json

Appends one run (all its points) to `--out` (JSON, also printed) and redraws the plot next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def train_documents(n: int, chapters: int = 4) -> list[tuple]:
    """The first `n` manuals of pretraining seed 1 as (doc_id, text, outline)."""
    from h2mt_jax.data.synthetic import generate_manual, manual_seed
    from h2mt_jax.hierarchy import parse

    mans = [generate_manual(manual_seed(1, i), chapters=chapters) for i in range(n)]
    return [(f"pretrain-{m.doc_id}", m.text, parse.parse_document(m.text, "markdown"))
            for m in mans]


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, ("train", "held_out")):
        for run in result["runs"]:
            for name in sorted({k for p in run["points"] for k in p[split]}):
                pts = [(p["step"], p[split][name]["carried_nats"]) for p in run["points"]
                       if name in p[split]]
                ax.plot(*zip(*pts), marker="o", label=f"{run['label']}: {name}")
        ax.set_title(f"{split} leaves")
        ax.set_xlabel("memory pretraining steps")
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].set_ylabel("carried nats / token (other-leaf NLL - own NLL)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="smollm2-135m-h2mt")
    ap.add_argument("--manuals", type=int, default=40)
    ap.add_argument("--steps", default="50,100", help="cumulative step counts to probe at")
    ap.add_argument("--read-modes", default="memory_kv")
    ap.add_argument("--mem-pool", default="write", choices=("write", "mean"))
    ap.add_argument("--trainable", default="memory+lora", choices=("memory", "memory+lora"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batches", type=int, default=16, help="probe batches (4 leaves) per split")
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "mem_capacity"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                   "memory_capacity.json"))
    args = ap.parse_args()
    import h2mt_jax
    from configs.memory_pretrain import get_config
    from h2mt_jax.train.trainer import train_and_evaluate
    from memory_probe import documents, probe

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    docs = train_documents(args.manuals)
    c = get_config()
    c.checkpoint = args.checkpoint
    c.workdir = args.runs
    c.data.sources, c.data.pretrain_manuals = "synthetic", args.manuals
    c.train.read_modes = args.read_modes
    c.train.mem_pool, c.train.trainable = args.mem_pool, args.trainable
    c.train.decay, c.train.lr, c.train.warmup = "constant", args.lr, 5
    c.train.checkpoint_every = 25
    c.eval.after_training = False
    held = documents("manuals", c.data)
    result = {"bench": "memory_capacity", "runs": []}
    if os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    decoder = "frozen decoder" if args.trainable == "memory" else "adapted decoder"
    run = {"args": vars(args), "label": f"{args.mem_pool} pool, {decoder}",
           "points": []}
    result["runs"].append(run)

    def point(step: int, ckpt: str, train_s: float) -> None:
        t0 = time.perf_counter()
        row = {"step": step, "train_s": train_s,
               "train": probe(ckpt, "train", args.batches, lm, docs=docs, modes=args.read_modes,
                              pool=args.mem_pool, trainable=args.trainable),
               "held_out": probe(ckpt, "manuals", args.batches, lm, docs=held,
                                 modes=args.read_modes, pool=args.mem_pool,
                                 trainable=args.trainable)}
        row["probe_s"] = time.perf_counter() - t0
        run["points"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        plot(result, os.path.splitext(args.out)[0] + ".png")

    from h2mt_jax.hierarchy.h2mt import H2MT

    run["m"] = H2MT.load(args.checkpoint, lm).config.mem_tokens
    point(0, args.checkpoint, 0.0)
    for s in [int(x) for x in args.steps.split(",") if x.strip()]:
        c.train.steps = s
        t0 = time.perf_counter()
        res = train_and_evaluate(c, args.runs, progress=True)
        if "preempted_at" in res:  # SIGTERM: the run saved its state; rerun to resume
            raise SystemExit(f"stopped at step {res['preempted_at']} (SIGTERM); rerun the same "
                             "command to resume")
        point(s, os.path.join(args.runs, "model"), time.perf_counter() - t0)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
