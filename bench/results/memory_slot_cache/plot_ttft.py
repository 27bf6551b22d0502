"""TTFT at 8k document tokens per answer reading, as a multiple of the empty-context floor
(`ttft_8k.json` here) -> `ttft_8k.png`.

    python bench/results/memory_slot_cache/plot_ttft.py
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"memory_prefilled": "memory\n(slots prefilled)", "memory": "memory\n(stored slots)",
          "memory_kv": "memory_kv", "leaf_kv": "leaf_kv", "text": "text"}


def main():
    with open(os.path.join(HERE, "ttft_8k.json")) as f:
        d = json.load(f)
    ratio = d["ttft_vs_empty"]
    names = [n for n in LABELS if n in ratio]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bars = ax.bar([LABELS[n] for n in names], [ratio[n] for n in names],
                  color=["#bbbbbb" if n == "memory_prefilled" else "#3b7dd8" for n in names])
    ax.bar_label(bars, fmt="%.2f×")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(1.5, color="#d84b3b", ls="--", lw=1, label="target for memory readings (1.5×)")
    ax.set_ylabel("TTFT ÷ empty-context TTFT")
    ax.set_title(f"TTFT at {d['ttft_doc_tokens']} document tokens, shipped checkpoint "
                 f"(floor {1000 * d['ttft_median_s']['empty']:.0f} ms)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "ttft_8k.png"), dpi=120)


if __name__ == "__main__":
    main()
