"""H²MT on LongBench qasper (through LongBench's jsonl; gold = sentences containing an answer).

    python train.py --config=configs/qasper.py --config.data.path=LongBench/data/qasper.jsonl
    python evaluate.py --config=configs/qasper.py --config.method=full,h2mt
    python train.py --config=configs/qasper.py:tiny
"""

import os

from configs.common import base_config, tiny

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "longbench",
                       "qasper.jsonl")


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/qasper"
    c.data.source = "longbench"
    c.data.dataset = "qasper"
    c.data.path = DEFAULT
    c.data.held_out = 0.3
    c.h2mt.k = 4
    c.train.trainable = "memory+lora"
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/qasper-tiny"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/qasper.py (known: tiny)")
    return c
