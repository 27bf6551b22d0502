"""H²MT on LongBench narrativeqa (through LongBench's jsonl; gold = sentences containing an answer).

    python train.py --config=configs/narrativeqa.py --config.data.path=LongBench/data/narrativeqa.jsonl
    python evaluate.py --config=configs/narrativeqa.py --config.method=full,h2mt
    python train.py --config=configs/narrativeqa.py:tiny
"""

import os

from configs.common import base_config, tiny

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "longbench",
                       "narrativeqa.jsonl")


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/narrativeqa"
    c.data.source = "longbench"
    c.data.dataset = "narrativeqa"
    c.data.path = DEFAULT
    c.data.held_out = 0.3
    c.h2mt.k = 4
    c.train.trainable = "memory+lora"
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/narrativeqa-tiny"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/narrativeqa.py (known: tiny)")
    return c
