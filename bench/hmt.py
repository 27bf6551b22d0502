"""HMT memory and speed: streaming perplexity at growing input lengths, and training throughput.

Prints one JSON object:
- `stream`: for 4k/8k/16k/32k tokens on SmolLM2-135M, the peak resident memory of a process that
  streams the document through the segment scan (each length in its own process, so the peak is
  that length's), seconds per 1k tokens after compilation, and the ratios to the 4k run
  (targets: memory at 32k within 1.2x of 4k; time linear in the length);
- `train`: training tokens/s for segment 256, 32 sensory tokens, BPTT depth 4, on a tiny random
  config and on SmolLM2-135M: the jitted step of the trainer (`h2mt_jax.train.trainer`) for task
  `hmt_lm` (configs/wikitext.py), memory parameters trainable.

    python bench/hmt.py [--lengths 4096,8192,16384,32768] [--train-steps 3]
    python bench/hmt.py --tiny     # a quick check of the bench: tiny random backbone, short texts
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


def one_length(n: int, model: str) -> dict:
    """Runs in a child process: warm up on a short document, then stream `n` tokens."""
    import h2mt_jax
    from h2mt_jax.hmt import HMT, HMTConfig

    lm = h2mt_jax.load_lm(model)
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
    """Seconds per training step of the trainer's jitted step (`init_state`, `compile_step`),
    each step timed from its batch's transfer to its loss on the host."""
    import jax
    import numpy as np

    from configs.wikitext import get_config
    from h2mt_jax.train import trainer
    from h2mt_jax.train.hmt_lm import HMTLMTask

    c = get_config()
    c.hmt.segment_length, c.hmt.num_sensory = SEGMENT, SENSORY
    c.train.steps, c.train.batch_size, c.train.bptt_depth = steps + 1, 1, DEPTH
    c.train.warmup, c.train.lr, c.train.trainable = 1, 1e-3, "memory"
    start = time.perf_counter()
    tokens = np.random.default_rng(0).integers(0, lm.config.vocab_size, 50_000).astype(np.int32)
    task = HMTLMTask(c, lm=lm, progress=False, tokens=tokens)
    optimizer = trainer.make_optimizer(c.train)
    mesh = trainer.sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    state, state_sh, frozen = trainer.init_state(task, optimizer, mesh,
                                                 jax.random.PRNGKey(c.seed))
    batches = iter(task.dataset().to_iter_dataset())
    step_fn = batch_sh = None
    seconds, tokens_per_step = [], 0
    for _ in range(c.train.steps):
        batch = next(batches)
        if step_fn is None:
            step_fn, batch_sh = trainer.compile_step(task, optimizer, state_sh, frozen, mesh,
                                                     batch)
        t0 = time.perf_counter()
        state, metrics = step_fn(state, frozen, jax.device_put(batch, batch_sh))
        loss = float(metrics["loss"])
        seconds.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss}")
        tokens_per_step = int(batch["ids"].size)
    rates = [tokens_per_step / s for s in seconds[1:]]  # step 0 includes compilation
    return {"tokens_per_s": float(np.median(rates)), "tokens_per_step": tokens_per_step,
            "compile_and_first_step_s": seconds[0], "total_s": time.perf_counter() - start}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default=None, help="default 4096,8192,16384,32768 "
                    "(--tiny: 1024,2048)")
    ap.add_argument("--train-steps", type=int, default=None, help="default 3 (--tiny: 2)")
    ap.add_argument("--tiny", action="store_true",
                    help="quick check: the tiny random backbone (SmolLM2's tokenizer) streams "
                         "short texts; training on the tiny config only")
    ap.add_argument("--model", default="smollm2-135m-instruct", help=argparse.SUPPRESS)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_length(args.one, args.model)))
        return
    model = "tiny-random-smollm2" if args.tiny else args.model
    lengths = args.lengths or ("1024,2048" if args.tiny else "4096,8192,16384,32768")
    train_steps = args.train_steps or (2 if args.tiny else 3)

    stream = []
    for n in [int(x) for x in lengths.split(",")]:
        res = subprocess.run([sys.executable, __file__, "--one", str(n), "--model", model],
                             capture_output=True, text=True, check=True)
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
             "tiny": train_throughput(tiny, train_steps)}
    if not args.tiny:
        train["smollm2_135m"] = train_throughput(h2mt_jax.load_lm("smollm2-135m-instruct"),
                                                 train_steps)
    out = {"bench": "hmt", "model": model, "segment_length": SEGMENT,
           "num_sensory": SENSORY, "stream": stream, "train": train,
           "targets_met": {
               "memory_32k_within_1_2x_of_4k": stream[-1]["memory_ratio_vs_first"] <= 1.2,
               "time_linear_within_1_25x": all(r["time_per_token_ratio_vs_first"] <= 1.25
                                               for r in stream)}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
