"""Backbone speed against transformers PyTorch on the same SmolLM2-135M weights, in one run.

Prints one JSON object: prefill tokens/s at 512/1024/2048 tokens (last-token logits and the KV
cache, as at time-to-first-token), batch-1 greedy decode tokens/s, achieved GFLOP/s, each
framework's fp32 matmul throughput on square 2048 matrices, the ratios, and compile times.

    python bench/backbone.py [--lengths 512,1024,2048] [--decode-tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def interleaved(fns: dict, reps: int) -> dict:
    """Per function: (first-call seconds, median, best) with the calls alternating between the
    functions, so that the machine's drifting load hits all of them alike."""
    first = {}
    for k, f in fns.items():
        t = time.perf_counter()
        f()
        first[k] = time.perf_counter() - t
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: (first[k], statistics.median(v), min(v)) for k, v in times.items()}


def matmul_gflops(reps: int) -> dict:
    import torch

    n = 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x, y: x @ y)
    ta = torch.randn(n, n)
    res = interleaved({"xla": lambda: f(a, a).block_until_ready(),
                       "torch": lambda: torch.matmul(ta, ta)}, reps * 3)
    _, med, best = res["xla"]
    _, tmed, tbest = res["torch"]
    fl = 2 * n ** 3
    return {"xla_fp32_matmul_gflops": fl / best / 1e9, "torch_fp32_matmul_gflops": fl / tbest / 1e9,
            "xla_fp32_matmul_gflops_median": fl / med / 1e9,
            "torch_fp32_matmul_gflops_median": fl / tmed / 1e9}


def prefill_flops(cfg, t: int) -> float:
    """Model FLOPs of a causal prefill of `t` tokens with last-token logits."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * (d * (cfg.q_dim + 2 * cfg.kv_dim) + cfg.q_dim * d + 3 * d * f)
    attention = 2 * 2 * cfg.q_dim * t * (t + 1) / 2  # QK^T and PV over the causal triangle
    return cfg.num_layers * (per_token * t + attention) + 2 * d * cfg.vocab_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--lengths", default="512,1024,2048")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--decode-prompt", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    import torch
    import transformers

    import h2mt_jax
    from bench.hmt_reference import transformers_model
    from h2mt_jax.generation.decode import decode, prefill_tokens
    from h2mt_jax.generation.sampling import Sampling

    transformers.logging.set_verbosity_error()
    lm = h2mt_jax.load_lm(args.model)
    lm_bf16 = h2mt_jax.load_lm(args.model, dtype="bfloat16", tokenizer=False)
    cfg = lm.config
    ref = transformers_model(args.model).eval()
    rng = np.random.default_rng(0)
    out = {"bench": "backbone", "model": args.model, "machine": platform.machine(),
           "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
           "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), **matmul_gflops(args.reps), "prefill": []}

    for t in [int(x) for x in args.lengths.split(",")]:
        ids = rng.integers(0, cfg.vocab_size, size=(1, t)).astype(np.int32)
        jids, lens = jnp.asarray(ids), jnp.asarray([t], jnp.int32)
        ours = lambda: jax.block_until_ready(  # noqa: E731
            prefill_tokens(lm.graphdef, lm.params, jids, lens, t))
        tids = torch.as_tensor(ids, dtype=torch.long)

        def theirs():
            with torch.inference_mode():
                ref(tids, use_cache=True, logits_to_keep=1)

        ours_bf16 = lambda: jax.block_until_ready(  # noqa: E731
            prefill_tokens(lm_bf16.graphdef, lm_bf16.params, jids, lens, t))
        res = interleaved({"ours": ours, "torch": theirs, "ours_bf16": ours_bf16}, args.reps)
        first, med, best = res["ours"]
        _, tmed, tbest = res["torch"]
        fl = prefill_flops(cfg, t)
        out["prefill"].append({
            "tokens": t, "ours_tok_s": t / best, "torch_tok_s": t / tbest,
            "ours_tok_s_median": t / med, "torch_tok_s_median": t / tmed,
            "ratio_vs_torch": tbest / best, "ratio_vs_torch_median": tmed / med,
            "ours_gflops": fl / best / 1e9, "torch_gflops": fl / tbest / 1e9,
            "ours_fraction_of_xla_matmul": fl / best / 1e9 / out["xla_fp32_matmul_gflops"],
            "ours_compile_s": first - med,
            "ours_bf16_tok_s": t / res["ours_bf16"][2],
            "ours_bf16_gflops": fl / res["ours_bf16"][2] / 1e9})

    # Decode: batch 1, greedy, a fixed number of tokens (no early stop) after a prompt.
    n, p = args.decode_tokens, args.decode_prompt
    ids = rng.integers(0, cfg.vocab_size, size=(1, p)).astype(np.int32)
    cache_size = p + n
    no_eos = jnp.asarray([-1], jnp.int32)
    logits, _ = prefill_tokens(lm.graphdef, lm.params, jnp.asarray(ids), jnp.asarray([p]), cache_size)

    def ours_decode():
        _, cache = prefill_tokens(lm.graphdef, lm.params, jnp.asarray(ids), jnp.asarray([p]),
                                  cache_size)
        jax.block_until_ready(cache)
        t = time.perf_counter()
        toks, _, _ = decode(lm.graphdef, lm.params, cache, logits, jax.random.PRNGKey(0), no_eos,
                            jnp.int32(0), sampling=Sampling(), max_new_tokens=n)
        jax.block_until_ready(toks)
        return time.perf_counter() - t

    t0 = time.perf_counter()
    ours_decode()
    decode_compile = time.perf_counter() - t0
    tids = torch.as_tensor(ids, dtype=torch.long)
    mask = torch.ones_like(tids)

    def torch_gen(k):
        with torch.inference_mode():
            t = time.perf_counter()
            ref.generate(tids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k,
                         do_sample=False, pad_token_id=0)
            return time.perf_counter() - t

    torch_gen(2)
    ours_times, torch_times = [], []
    for _ in range(args.reps):  # alternate, as for prefill
        ours_times.append(ours_decode())
        torch_times.append(torch_gen(n) - torch_gen(1))
    # `decode` produces n tokens of which the first comes from the prefill logits: n-1 steps.
    ours_best = (n - 1) / min(ours_times)
    torch_best = (n - 1) / min(torch_times)
    out["decode"] = {
        "prompt_tokens": p, "new_tokens": n, "ours_tok_s": ours_best, "torch_tok_s": torch_best,
        "ours_tok_s_median": (n - 1) / statistics.median(ours_times),
        "torch_tok_s_median": (n - 1) / statistics.median(torch_times),
        "ratio_vs_torch": ours_best / torch_best,
        "ratio_vs_torch_median": statistics.median(torch_times) / statistics.median(ours_times),
        "ours_compile_s": decode_compile - statistics.median(ours_times),
        "weights_gb_per_token": cfg.num_params * 4 / 1e9,
        "ours_weight_bandwidth_gb_s": cfg.num_params * 4 / 1e9 * ours_best}
    targets = {
        "prefill_ge_1x_torch_at_1024_2048": all(
            r["ratio_vs_torch"] >= 1.0 for r in out["prefill"] if r["tokens"] >= 1024),
        "prefill_ge_80pct_xla_matmul": all(
            r["ours_fraction_of_xla_matmul"] >= 0.8 for r in out["prefill"] if r["tokens"] >= 1024),
        "decode_ge_1_5x_torch": out["decode"]["ratio_vs_torch"] >= 1.5}
    out["targets_met"] = targets
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
