"""A short HMT language-modelling run on WikiText-2 (../shared/data/wikitext2/wiki.test.raw).

Trains the stage-2 HMT memory parameters (and optionally LoRA) of SmolLM2-135M on the first part
of the file, then compares perplexity on a held-out slice at its end:
- `isolated`: the backbone reading isolated segments of L tokens (no memory, no sensory tokens),
- `hmt_untrained` and `hmt_trained`: stage-2 HMT with the same L tokens per segment.
Prints JSON.

    python bench/hmt_lm.py [--steps 60] [--eval-tokens 8192] [--lora-rank 0] [--save DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _segment_nll(graphdef, params, ids, targets):
    from h2mt_jax.hmt.model import token_nll

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
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--bptt-depth", type=int, default=3)
    ap.add_argument("--segment-length", type=int, default=256)
    ap.add_argument("--num-sensory", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--save", default=None,
                    help="save the trained HMT here (for evaluate.py --config.hmt_checkpoint)")
    args = ap.parse_args()

    import h2mt_jax
    from h2mt_jax.hmt import HMT, HMTConfig
    from h2mt_jax.hmt.train import TrainConfig, train_lm

    path = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "wiki.test.raw")
    if not os.path.isfile(path):
        sys.exit(f"{path} is absent: this run needs the shared WikiText-2 sample")
    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    ids = np.asarray(lm.tokenizer(open(path, encoding="utf-8").read())["input_ids"], np.int32)
    train_ids, eval_ids = ids[:-args.eval_tokens], ids[-args.eval_tokens:]
    cfg = HMTConfig(segment_length=args.segment_length, num_sensory=args.num_sensory, stage=2)
    length = cfg.tokens_per_segment

    start = time.perf_counter()
    iso = isolated_ppl(lm, eval_ids, length)
    iso_s = time.perf_counter() - start
    hmt = HMT.create(lm, cfg)
    untrained = hmt.perplexity(eval_ids[None], progress=True)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, bptt_depth=args.bptt_depth,
                     lr=args.lr, warmup=max(1, args.steps // 10), lora_rank=args.lora_rank)
    start = time.perf_counter()
    trained, hist = train_lm(hmt, train_ids, tc)
    train_s = time.perf_counter() - start
    after = trained.perplexity(eval_ids[None], progress=True)
    if args.save:
        trained.save(args.save)
    losses = [h["loss"] for h in hist]
    out = {"bench": "hmt_lm", "model": "smollm2-135m-instruct", "data": "wikitext2 wiki.test.raw",
           "train_tokens_available": int(len(train_ids)), "eval_tokens": int(len(eval_ids)),
           "hmt_config": cfg.to_dict(), "tokens_per_segment": length,
           "train": {**tc.__dict__, "seconds": train_s,
                     "loss_first5": float(np.mean(losses[:5])),
                     "loss_last5": float(np.mean(losses[-5:])),
                     "tokens_per_s": float(np.median([h["tokens_per_s"] for h in hist[1:]]))},
           "ppl": {"isolated_segments": iso, "hmt_stage2_untrained": untrained["ppl"],
                   "hmt_stage2_trained": after["ppl"]},
           "seconds": {"isolated": iso_s, "hmt_untrained": untrained["seconds"],
                       "hmt_trained": after["seconds"]},
           "hmt_trained_beats_isolated": after["ppl"] < iso}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
