"""Training curves of a run directory's `metrics.jsonl` as a PNG: the training loss (moving average
over `--window` steps), split by the `mode` / `objective` metrics when the task logs them
(memory_lm: memory / memory_kv reading, reconstruction / continuation), and the other logged
losses (h2mt_qa: answer, routing, distillation; per reading when the run logs `read_mode`).

    python bench/plot_curves.py runs/memory_pretrain bench/results/shipped_checkpoint/stage1.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from h2mt_jax.hierarchy.loss import QA_READ_MODES  # noqa: E402
from h2mt_jax.hierarchy.memory_loss import READ_MODES  # noqa: E402


def series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{label: (steps, values)} of the training rows."""
    out: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for r in rows:
        if r.get("split") != "train":
            continue
        if "objective" in r:  # memory_lm: one (reading, objective) per step
            label = (f"{READ_MODES[int(r['mode'])]} "
                     f"{('reconstruction', 'continuation')[int(r['objective'])]}")
            out[label][0].append(r["step"])
            out[label][1].append(r["loss"])
            continue
        # h2mt_qa: with `read_mode` (an index into QA_READ_MODES), each loss per reading
        tag = f" ({QA_READ_MODES[int(r['read_mode'])]})" if "read_mode" in r else ""
        for k in ("loss", "answer_loss", "route_loss", "distill_loss"):
            if k in r and r[k] is not None:
                out[k + tag][0].append(r["step"])
                out[k + tag][1].append(r[k])
    return dict(out)


def smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if len(v) < window or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    head = c[1:window] / np.arange(1, window)
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a workdir with metrics.jsonl")
    ap.add_argument("out", help="the PNG to write")
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(args.run, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (steps, values) in sorted(series(rows).items()):
        ax.plot(steps, smooth(values, args.window), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (mean of {args.window} steps)")
    ax.set_title(os.path.basename(os.path.normpath(args.run)))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(json.dumps({"run": args.run, "png": args.out,
                      "series": {k: len(v[0]) for k, v in series(rows).items()}}))


if __name__ == "__main__":
    main()
