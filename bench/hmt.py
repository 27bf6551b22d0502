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

`--train` instead prints HMT training side by side with the reference, in one run: ours (the
trainer's jitted step, `configs/wikitext.py`) and the reference's training step as restated in
PyTorch by `bench/hmt_reference.py` (the public OswaldHe/HMT-pytorch needs CUDA; the JSON says
whether it could run here, `reference_importable`) on the same weights, windows and AdamW, with all parameters trained (the reference's setting) and
with the memory parameters only; ours also with a bfloat16 backbone. Each configuration runs in
its own process (its peak memory is its own), the configurations take turns for `--rounds`
rounds, and the medians are reported: tokens/s, compile time, first step, peak resident memory,
model FLOP/s (and utilisation of the device's measured matmul peak when `--peak-gflops` is given).

    python bench/hmt.py --train [--rounds 2] [--train-steps 4] [--remat none]
    python bench/hmt.py --train --tiny   # the tiny random backbone
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
sys.path.insert(0, ROOT)  # h2mt_jax, configs and bench.hmt_reference

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


def train_throughput(lm, steps: int, c=None, tokens=None) -> dict:
    """Seconds per training step of the trainer's jitted step (`init_state`, `compile_step`),
    each step timed from its batch's transfer to its loss on the host; compilation is timed
    apart (`compile_s`, ahead of time) from the first step. `c`: a configs/wikitext.py config
    (default: memory parameters, segment 256, 32 sensory tokens, depth 4, batch 1)."""
    import jax
    import numpy as np

    from configs.wikitext import get_config
    from h2mt_jax.train import trainer
    from h2mt_jax.train.hmt_lm import HMTLMTask

    if c is None:
        c = get_config()
        c.hmt.segment_length, c.hmt.num_sensory = SEGMENT, SENSORY
        c.train.steps, c.train.batch_size, c.train.bptt_depth = steps + 1, 1, DEPTH
        c.train.warmup, c.train.lr, c.train.trainable = 1, 1e-3, "memory"
    start = time.perf_counter()
    if tokens is None:
        tokens = np.random.default_rng(0).integers(0, lm.config.vocab_size, 50_000).astype(np.int32)
    task = HMTLMTask(c, lm=lm, progress=False, tokens=tokens)
    optimizer = trainer.make_optimizer(c.train)
    mesh = trainer.sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    state, state_sh, frozen = trainer.init_state(task, optimizer, mesh,
                                                 jax.random.PRNGKey(c.seed))
    batches = iter(task.dataset().to_iter_dataset())
    step_fn = batch_sh = None
    seconds, tokens_per_step, compile_s = [], 0, 0.0
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(c.train.steps):
        batch = next(batches)
        if step_fn is None:
            step_fn, batch_sh = trainer.compile_step(task, optimizer, state_sh, frozen, mesh,
                                                     batch)
            t0 = time.perf_counter()
            step_fn = step_fn.lower(state, frozen, jax.device_put(batch, batch_sh)).compile()
            compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, metrics = step_fn(state, frozen, jax.device_put(batch, batch_sh))
        loss = float(metrics["loss"])
        seconds.append(time.perf_counter() - t0)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss}")
        tokens_per_step = int(batch["ids"].size)
    rates = [tokens_per_step / s for s in seconds[1:]]  # step 0 includes compilation
    return {"tokens_per_s": float(np.median(rates)), "tokens_per_step": tokens_per_step,
            "compile_s": compile_s, "first_step_s": seconds[0], "step_s": seconds,
            "rss_after_setup_mb": rss_setup, "total_s": time.perf_counter() - start}


def step_flops(cfg, hcfg, depth: int, batch: int, trainable: str,
               head_everywhere: bool = False) -> float:
    """Model FLOPs of one training step (matrix products only, attention included): the summary
    passes, the main passes, the LM head on the loss segment (`head_everywhere`: on every
    position of every pass, as the reference computes it); backward is 2x forward with all
    parameters trained, 1x (activation gradients only) with the memory parameters only."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, hcfg.tokens_per_segment
    per_token = 2 * cfg.num_layers * (d * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * d + 3 * d * f)

    def attn(t):  # q k^T and p v, causal (half the square)
        return 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * t * t / 2

    first = L + 2
    main = hcfg.segment_length
    summ = hcfg.query_tokens + 2
    positions = first + (depth - 1) * (main + summ)
    fwd = per_token * positions + attn(first) + (depth - 1) * (attn(main) + attn(summ)) \
        + 2 * (positions if head_everywhere else L) * d * cfg.vocab_size
    return batch * fwd * (3 if trainable == "all" else 2)


def train_one(impl: str, trainable: str, model: str, steps: int, remat: str,
              dtype: str = "float32") -> dict:
    """Runs in a child process: `steps + 1` training steps of one implementation, the first
    reported apart (`first_step_s`; ours is compiled ahead of time, `compile_s`). The PyTorch
    process also holds our JAX backbone (it builds the same initial memory parameters), so
    besides its peak RSS the increase over its RSS after setup is reported for both."""
    import numpy as np

    import h2mt_jax
    from configs.wikitext import get_config
    from h2mt_jax.hmt import HMTConfig

    c = get_config()
    c.hmt.segment_length, c.hmt.num_sensory = SEGMENT, SENSORY
    c.train.steps, c.train.batch_size, c.train.bptt_depth = steps + 1, 1, DEPTH
    c.train.warmup, c.train.lr, c.train.trainable, c.train.remat = 1, 1e-4, trainable, remat
    lm = h2mt_jax.load_lm(model, dtype=dtype)
    hcfg = HMTConfig.from_config(c.hmt)
    tokens = np.random.default_rng(0).integers(0, lm.config.vocab_size, 50_000).astype(np.int32)
    out = {"impl": impl, "trainable": trainable, "dtype": dtype, "remat": remat}
    if impl == "ours":
        import jax

        out.update(device=jax.devices()[0].device_kind, platform=jax.devices()[0].platform)
        out.update(train_throughput(lm, steps, c=c, tokens=tokens))
    else:
        out.update(torch_throughput(lm, model, hcfg, c, tokens, steps))
    out["gflop_per_step"] = step_flops(lm.config, hcfg, DEPTH, 1, trainable,
                                       head_everywhere=impl == "torch") / 1e9
    out["model_gflops"] = out["gflop_per_step"] * out["tokens_per_s"] / out["tokens_per_step"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["training_rss_increase_mb"] = out["peak_rss_mb"] - out.pop("rss_after_setup_mb")
    return out


def torch_throughput(lm, model: str, hcfg, c, tokens, steps: int) -> dict:
    """The reference's training step in PyTorch (restated, `bench/hmt_reference.py`): forward
    through the window, loss on the last segment, backward, gradient clipping, AdamW."""
    import numpy as np
    import torch

    from bench.hmt_reference import (TorchHMT, reference_importable, torch_optimizer,
                                     transformers_model)
    from h2mt_jax.hmt import HMT

    usable, why = reference_importable(os.environ.get("HMT_PYTORCH_DIR"))
    th = TorchHMT.from_hmt(transformers_model(model).train(), HMT.create(lm, hcfg, seed=c.seed))
    if c.train.trainable != "all":
        for p in th.model.parameters():
            p.requires_grad_(False)
    params = [p for p in th.parameters() if p.requires_grad]
    t = c.train
    opt, sched = torch_optimizer(params, t.lr, t.warmup, t.steps, t.weight_decay)
    window = DEPTH * th.length + 1
    seconds = []
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for i in range(steps + 1):  # as ours: the first step is reported apart
        win = torch.as_tensor(tokens[None, i * th.length:i * th.length + window].astype(np.int64))
        t0 = time.perf_counter()
        loss = th.window_loss(win)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.clip)
        opt.step()
        sched.step()
        loss = float(loss)
        seconds.append(time.perf_counter() - t0)
    n = DEPTH * th.length
    return {"reference": "PyTorch restatement (bench/hmt_reference.py)",
            "public_reference_usable_here": usable, "public_reference_why": why,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "tokens_per_s": float(np.median([n / s for s in seconds[1:]])),
            "tokens_per_step": n, "compile_s": 0.0, "first_step_s": seconds[0],
            "step_s": seconds, "rss_after_setup_mb": rss_setup}


def side_by_side(args, model: str) -> dict:
    """`--train`: every configuration in its own process, `rounds` times in turn."""
    import statistics

    configs = [("ours", "all", "float32"), ("torch", "all", "float32"),
               ("ours", "memory", "float32"), ("torch", "memory", "float32"),
               ("ours", "memory", "bfloat16")]
    runs = {cfg: [] for cfg in configs}
    for r in range(args.rounds):
        for impl, trainable, dtype in configs:
            cmd = [sys.executable, __file__, "--train-one", f"{impl},{trainable},{dtype}",
                   "--model", model, "--train-steps", str(args.train_steps or 4),
                   "--remat", args.remat]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
            runs[(impl, trainable, dtype)].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r}: {impl} {trainable} {dtype}: "
                  f"{runs[(impl, trainable, dtype)][-1]['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    table = {}
    for (impl, trainable, dtype), rs in runs.items():
        med = lambda k: statistics.median(x[k] for x in rs)  # noqa: E731
        row = dict(rs[-1])
        row.pop("step_s", None)
        for k in ("tokens_per_s", "compile_s", "first_step_s", "peak_rss_mb",
                  "training_rss_increase_mb", "model_gflops"):
            row[k] = med(k)
        row["tokens_per_s_each_round"] = [x["tokens_per_s"] for x in rs]
        if args.peak_gflops:
            row["mfu_vs_matmul_peak"] = row["model_gflops"] / args.peak_gflops
        table[f"{impl}_{trainable}_{dtype}"] = row
    ratio = lambda a, b: table[a]["tokens_per_s"] / table[b]["tokens_per_s"]  # noqa: E731
    all_ratio = ratio("ours_all_float32", "torch_all_float32")
    return {"bench": "hmt_train", "model": model, "segment_length": SEGMENT,
            "num_sensory": SENSORY, "bptt_depth": DEPTH, "batch_size": 1, "rounds": args.rounds,
            "steps_per_run": args.train_steps or 4, "remat": args.remat, "runs": table,
            "ratio_all_params": all_ratio,
            "ratio_memory_params": ratio("ours_memory_float32", "torch_memory_float32"),
            "ratio_ours_memory_bf16_vs_fp32": ratio("ours_memory_bfloat16", "ours_memory_float32"),
            "targets_met": {"all_params_at_least_1_2x_reference": all_ratio >= 1.2}}


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
    ap.add_argument("--train", action="store_true",
                    help="HMT training, ours beside the reference (see the module docstring)")
    ap.add_argument("--rounds", type=int, default=2, help="--train: rounds of all configurations")
    ap.add_argument("--remat", default="dots", choices=["none", "dots", "full"],
                    help="--train: our remat policy (train.remat)")
    ap.add_argument("--peak-gflops", type=float, default=0.0,
                    help="--train: the device's measured fp32 matmul GFLOP/s (bench/backbone.py), "
                         "to report model FLOP utilisation")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--train-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_one:
        impl, trainable, dtype = args.train_one.split(",")
        print(json.dumps(train_one(impl, trainable, args.model, args.train_steps or 4,
                                   args.remat, dtype)))
        return
    if args.train:
        model = args.model
        if args.tiny:  # a small random Llama on disk, so that PyTorch reads the same weights
            import tempfile

            from bench.hmt_reference import save_random_llama

            model = save_random_llama(tempfile.mkdtemp(prefix="hmt_tiny_"))
        out = side_by_side(args, model)
        text = json.dumps(out, indent=1)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
        return
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
