"""A short HMT language-modelling run on WikiText-2 (../shared/data/wikitext2/wiki.test.raw).

Trains the stage-2 HMT memory parameters (and optionally LoRA) of SmolLM2-135M on the first part
of the file, then compares perplexity on a held-out slice at its end:
- `isolated`: the backbone reading isolated segments of L tokens (no memory, no sensory tokens),
- `hmt_untrained` and `hmt_trained`: stage-2 HMT with the same L tokens per segment.
Training is the project's trainer (`h2mt_jax.train.trainer.train_and_evaluate`, task `hmt_lm` of
configs/wikitext.py) in a temporary workdir (or --workdir, where an interrupted run resumes).
With `--stage1-steps N` it first trains stage 1 (each segment reads the previous memory) for N
steps, then stage 2 from that checkpoint for `--steps` (the reference's two-stage schedule), and
reports the perplexity after each stage. Prints JSON.

    python bench/hmt_lm.py [--steps 60] [--eval-tokens 8192] [--lora-rank 0] [--save DIR]
    python bench/hmt_lm.py --stage1-steps 150 --steps 250 --lora-rank 8 --workdir runs/wt2
    python bench/hmt_lm.py --tiny   # a quick check: configs/wikitext.py:tiny, 2 steps, 512 tokens
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _segment_nll(graphdef, params, ids, targets):
    from h2mt_jax.hmt.loss import token_nll

    model = nnx.merge(graphdef, params)
    return token_nll(model.logits(model(model.embed(ids))[0]), targets)


def isolated_ppl(lm, ids: np.ndarray, length: int, batch: int = 8) -> float:
    """Perplexity when each segment of `length` tokens is read on its own (same targets as HMT:
    every token predicts the next one, the last token of a segment included)."""
    n = len(ids)
    segs = -(-n // length)
    x = np.zeros(segs * length, np.int32)
    x[:n] = ids
    t = np.full(segs * length, -1, np.int32)
    t[:n - 1] = ids[1:]
    x, t = x.reshape(segs, length), t.reshape(segs, length)
    nll, count = 0.0, 0
    for i in range(0, segs, batch):
        xb, tb = x[i:i + batch], t[i:i + batch]
        pad = batch - len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, length), np.int32)])
            tb = np.concatenate([tb, np.full((pad, length), -1, np.int32)])
        s, c = _segment_nll(lm.graphdef, lm.params, jnp.asarray(xb), jnp.asarray(tb))
        nll, count = nll + float(s), count + int(c)
    return math.exp(nll / count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="stage-2 steps")
    ap.add_argument("--stage1-steps", type=int, default=0,
                    help="train stage 1 for this many steps first (0: stage 2 only)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--bptt-depth", type=int, default=3)
    ap.add_argument("--segment-length", type=int, default=256)
    ap.add_argument("--num-sensory", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--tiny", action="store_true",
                    help="quick check: configs/wikitext.py:tiny (tiny random backbone with "
                         "SmolLM2's tokenizer, its segment sizes), 2 steps, 512 held-out tokens")
    ap.add_argument("--workdir", default=None,
                    help="the trainer's workdir (default: a temporary directory, removed after)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--save", default=None,
                    help="save the trained HMT here (for evaluate.py --config.hmt_checkpoint)")
    args = ap.parse_args()

    from configs.wikitext import get_config
    from h2mt_jax.hmt import HMT
    from h2mt_jax.train.hmt_lm import HMTLMTask
    from h2mt_jax.train.trainer import train_and_evaluate

    path = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "wiki.test.raw")
    if not os.path.isfile(path):
        sys.exit(f"{path} is absent: this run needs the shared WikiText-2 sample")
    c = get_config("tiny" if args.tiny else None)
    c.data.path, c.resume = path, False
    if args.tiny:
        c.data.eval_tokens = 512
    else:
        c.data.eval_tokens = args.eval_tokens
        c.hmt.segment_length, c.hmt.num_sensory = args.segment_length, args.num_sensory
        c.train.steps, c.train.batch_size = args.steps, args.batch_size
        c.train.bptt_depth, c.train.lr = args.bptt_depth, args.lr
        c.train.warmup = max(1, args.steps // 10)
    c.hmt.stage = 2
    c.train.trainable = "memory+lora" if args.lora_rank else "memory"
    if args.lora_rank:
        c.train.lora_rank = args.lora_rank
    c.train.checkpoint_every = max(1, min(50, c.train.steps))
    c.eval.before_training = True  # the untrained HMT's perplexity
    c.resume = args.workdir is not None
    workdir = args.workdir or tempfile.mkdtemp(prefix="hmt_lm_")
    c.workdir = workdir

    def stage_config(stage: int, steps: int, workdir: str, checkpoint: str = ""):
        sc = c.copy_and_resolve_references()
        sc.hmt.stage, sc.checkpoint, sc.workdir = stage, checkpoint, workdir
        sc.train.steps = steps
        sc.train.warmup = max(1, steps // 10)
        sc.train.checkpoint_every = max(1, min(50, steps))
        sc.resume = args.workdir is not None
        sc.eval.before_training = False
        return sc

    task = HMTLMTask(c)
    lm, cfg, eval_ids = task.lm, task.hcfg, task.eval_ids
    length = cfg.tokens_per_segment
    start = time.perf_counter()
    iso = isolated_ppl(lm, eval_ids, length)
    iso_s = time.perf_counter() - start
    stages = {}
    try:
        if args.stage1_steps:
            s1 = stage_config(1, args.stage1_steps, os.path.join(workdir, "stage1"))
            r1 = train_and_evaluate(s1, s1.workdir, task=HMTLMTask(s1, lm=lm))
            if "preempted_at" in r1:
                sys.exit(f"stage 1 stopped at step {r1['preempted_at']}: run again to resume")
            stages["stage1"] = (s1, r1)
            s2 = stage_config(2, c.train.steps, os.path.join(workdir, "stage2"),
                              os.path.join(s1.workdir, "model"))
            task = HMTLMTask(s2, lm=lm)
            results = train_and_evaluate(s2, s2.workdir, task=task)
            stages["stage2"] = (s2, results)
            if "preempted_at" in results:
                sys.exit(f"stage 2 stopped at step {results['preempted_at']}: run again to resume")
            results["before"] = task.evaluate(HMTLMTask(stage_config(2, 1, workdir), lm=lm)
                                              .init(jax.random.PRNGKey(c.seed)))
        else:
            results = train_and_evaluate(c, workdir, task=task)
            if "preempted_at" in results:
                sys.exit(f"training stopped at step {results['preempted_at']}: run again with "
                         "--workdir to resume")
            stages["stage2"] = (c, results)
        per_stage = {}
        for name, (sc, _) in stages.items():
            with open(os.path.join(sc.workdir, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f]
            last = {r["step"]: r for r in rows if r["split"] == "train"}  # resumed: the last try
            per_stage[name] = [last[k] for k in sorted(last)]
        trained_hmt = HMT.load(os.path.join(stages["stage2"][0].workdir, "model"), lm=lm)
        # The same isolated segments read by the trained backbone (adapters merged): how much of
        # the drop the adapters alone explain, without the memory.
        iso_adapted = (isolated_ppl(trained_hmt.merged_lm, eval_ids, length)
                       if trained_hmt.lora else None)
        if args.save:
            trained_hmt.save(args.save)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    untrained, after = results["before"], results["after"]
    t = c.train
    step_tokens = t.batch_size * t.bptt_depth * length

    def stage_summary(rows):
        losses, step_s = [r["loss"] for r in rows], [r["step_s"] for r in rows]
        return {"steps": len(rows), "seconds": float(sum(step_s)),
                "loss_first5": float(np.mean(losses[:5])),
                "loss_last5": float(np.mean(losses[-5:])),
                "tokens_per_s": float(np.median([step_tokens / x for x in step_s[1:]]
                                                if len(step_s) > 1 else [step_tokens / step_s[0]]))}

    train = {"steps": t.steps, "batch_size": t.batch_size, "bptt_depth": t.bptt_depth,
             "loss_segments": 1, "lr": t.lr, "warmup": t.warmup, "weight_decay": t.weight_decay,
             "stage1_steps": args.stage1_steps,
             "clip": t.clip, "lora_rank": args.lora_rank, "lora_alpha": t.lora_alpha,
             "remat": t.remat, "seed": c.seed, "trainable": t.trainable,
             **stage_summary(per_stage["stage2"]),
             **({"stage1": stage_summary(per_stage["stage1"])} if "stage1" in per_stage else {})}
    out = {"bench": "hmt_lm", "model": c.backbone, "data": "wikitext2 wiki.test.raw",
           "train_tokens_available": int(len(task.train_ids)), "eval_tokens": int(len(eval_ids)),
           "hmt_config": cfg.to_dict(), "tokens_per_segment": length,
           "train": train,
           "ppl": {"isolated_segments": iso,
                   **({"isolated_segments_trained_adapters": iso_adapted}
                      if iso_adapted is not None else {}),
                   "hmt_stage2_untrained": untrained["ppl"],
                   **({"hmt_stage1_trained": stages["stage1"][1]["after"]["ppl"]}
                      if "stage1" in stages else {}),
                   "hmt_stage2_trained": after["ppl"]},
           "ppl_change_vs_untrained_stage2": after["ppl"] / untrained["ppl"] - 1,
           "seconds": {"isolated": iso_s, "hmt_untrained": untrained["seconds"],
                       "hmt_trained": after["seconds"]},
           "hmt_trained_beats_isolated": after["ppl"] < iso,
           "targets_met": {"ppl_5_percent_below_untrained_stage2":
                           after["ppl"] <= 0.95 * untrained["ppl"]}}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
