"""Prefill and decode under the XLA CPU options the installed jaxlib offers, each beside PyTorch.

Runs `bench/backbone.py` once per setting of `XLA_FLAGS` (each in its own process, so that the
flags take effect before JAX starts) and collects, per setting: prefill tokens/s at each length
(ours fp32 and bf16 weights, PyTorch fp32 in the same process), the ratio to PyTorch, the
fraction of XLA's own fp32 matmul throughput measured in that process, and decode tokens/s.
Prints JSON. The settings tried (the names are jaxlib 0.10's):

- `default`: XLA's defaults (YNNPACK for the dots it takes, Eigen for the rest);
- `eigen`: `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK: every dot on Eigen);
- `onednn`: oneDNN dots as custom calls, YNNPACK off;
- `single_thread_eigen`: `--xla_cpu_multi_thread_eigen=false`;
- `no_fusion_emitters`: the older loop emitters for elementwise fusions.

    python bench/xla_flags.py [--settings default,eigen,onednn] [--lengths 1024,2048] \
        [--out bench/results/xla_flags.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SETTINGS = {
    "default": "",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true "
              "--xla_cpu_experimental_ynn_fusion_type=",
    "single_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = {}
    for name in args.settings.split(","):
        if name not in SETTINGS:
            sys.exit(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SETTINGS[name]).strip()
        cmd = [sys.executable, os.path.join(HERE, "backbone.py"), "--lengths", args.lengths,
               "--reps", str(args.reps), "--decode-tokens", str(args.decode_tokens)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            rows[name] = {"xla_flags": SETTINGS[name], "error": res.stderr.strip()[-500:]}
            print(f"{name}: failed", file=sys.stderr)
            continue
        out = json.loads(res.stdout[res.stdout.index("{"):])
        rows[name] = {"xla_flags": SETTINGS[name],
                      "xla_fp32_matmul_gflops": out["xla_fp32_matmul_gflops"],
                      "prefill": [{k: p[k] for k in ("tokens", "ours_tok_s", "torch_tok_s",
                                                     "ratio_vs_torch", "ratio_vs_torch_median",
                                                     "ours_gflops",
                                                     "ours_fraction_of_xla_matmul",
                                                     "ours_bf16_tok_s")}
                                  for p in out["prefill"]],
                      "decode_ratio_vs_torch": out["decode"]["ratio_vs_torch"]}
        print(f"{name}: " + ", ".join(f"{p['tokens']}: {p['ratio_vs_torch']:.2f}x torch, "
                                      f"{p['ours_fraction_of_xla_matmul']:.2f} of XLA peak"
                                      for p in rows[name]["prefill"]), file=sys.stderr)
    text = json.dumps({"bench": "xla_flags", "lengths": args.lengths, "settings": rows},
                      indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
