"""HMT memory and speed: streaming perplexity at growing input lengths, and training throughput.

Prints one JSON object:
- `stream`: for 4k/8k/16k/32k tokens on SmolLM2-135M, the peak resident memory of a process that
  streams the document through the segment scan (each length in its own process, so the peak is
  that length's), seconds per 1k tokens after compilation, and the ratios to the 4k run
  (targets: memory at 32k within 1.2x of 4k; time linear in the length);
- `train`: training tokens/s for segment 256, 32 sensory tokens, BPTT depth 4, on a tiny random
  config and on SmolLM2-135M.

    python bench/hmt.py [--lengths 4096,8192,16384,32768] [--train-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SEGMENT, SENSORY, DEPTH = 256, 32, 4


def document_tokens(lm, n: int):
    """`n` tokens of WikiText-2 (repeated if needed), or random ids without the shared data."""
    import numpy as np

    path = os.path.join(ROOT, "..", "shared", "data", "wikitext2", "wiki.test.raw")
    if os.path.isfile(path):
        ids = lm.tokenizer(open(path, encoding="utf-8").read()[:2_000_000])["input_ids"]
        ids = np.asarray(ids, np.int32)
        return np.resize(ids, n), "wikitext2"
    return np.random.default_rng(0).integers(0, lm.config.vocab_size, n).astype(np.int32), "random"


def one_length(n: int) -> dict:
    """Runs in a child process: warm up on a short document, then stream `n` tokens."""
    import h2mt_jax
    from h2mt_jax.hmt import HMT, HMTConfig

    lm = h2mt_jax.load_lm("smollm2-135m-instruct")
    hmt = HMT.create(lm, HMTConfig(segment_length=SEGMENT, num_sensory=SENSORY))
    ids, source = document_tokens(lm, n)
    # Warm-up past one chunk, so both programs (first chunk, later chunks) are compiled.
    from h2mt_jax.hmt.model import STREAM_CHUNK

    warm = hmt.perplexity(ids[None, :(STREAM_CHUNK + 3) * hmt.config.tokens_per_segment])
    rss_after_warmup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = hmt.perplexity(ids[None])
    return {"tokens": n, "text": source, "ppl": out["ppl"], "seconds": out["seconds"],
            "s_per_1k_tokens": out["seconds"] / n * 1000,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_after_warmup_mb": rss_after_warmup, "warmup_s": warm["seconds"]}


def train_throughput(lm, steps: int) -> dict:
    import numpy as np

    from h2mt_jax.hmt import HMT, HMTConfig
    from h2mt_jax.hmt.train import TrainConfig, train_lm

    hmt = HMT.create(lm, HMTConfig(segment_length=SEGMENT, num_sensory=SENSORY))
    tokens = np.random.default_rng(0).integers(0, lm.config.vocab_size, 50_000).astype(np.int32)
    tc = TrainConfig(steps=steps + 1, batch_size=1, bptt_depth=DEPTH, warmup=1)
    start = time.perf_counter()
    _, hist = train_lm(hmt, tokens, tc, progress=False)
    rates = [h["tokens_per_s"] for h in hist[1:]]  # step 0 includes compilation
    return {"tokens_per_s": float(np.median(rates)), "tokens_per_step": hist[0]["tokens_per_s"]
            * hist[0]["seconds"], "compile_and_first_step_s": hist[0]["seconds"],
            "total_s": time.perf_counter() - start}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4096,8192,16384,32768")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_length(args.one)))
        return

    stream = []
    for n in [int(x) for x in args.lengths.split(",")]:
        res = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                             text=True, check=True)
        stream.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(stream[-1]), file=sys.stderr)
    base = stream[0]
    for r in stream:
        r["memory_ratio_vs_first"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        r["time_per_token_ratio_vs_first"] = r["s_per_1k_tokens"] / base["s_per_1k_tokens"]

    import h2mt_jax

    tiny = h2mt_jax.random_lm(num_layers=4, hidden_size=128, intermediate_size=256,
                              num_heads=4, num_kv_heads=2, head_dim=32, vocab_size=1024)
    train = {"config": {"segment_length": SEGMENT, "num_sensory": SENSORY, "bptt_depth": DEPTH,
                        "batch_size": 1, "trainable": "memory parameters"},
             "tiny_config": "4 layers, d=128, vocab 1024",
             "tiny": train_throughput(tiny, args.train_steps),
             "smollm2_135m": train_throughput(h2mt_jax.load_lm("smollm2-135m-instruct"),
                                              args.train_steps)}
    out = {"bench": "hmt", "model": "smollm2-135m-instruct", "segment_length": SEGMENT,
           "num_sensory": SENSORY, "stream": stream, "train": train,
           "targets_met": {
               "memory_32k_within_1_2x_of_4k": stream[-1]["memory_ratio_vs_first"] <= 1.2,
               "time_linear_within_1_25x": all(r["time_per_token_ratio_vs_first"] <= 1.25
                                               for r in stream)}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
