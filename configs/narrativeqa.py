"""H²MT on LongBench narrativeqa (through LongBench's jsonl; gold = sentences containing an answer).

    python train.py --config=configs/narrativeqa.py --config.data.path=LongBench/data/narrativeqa.jsonl
    python evaluate.py --config=configs/narrativeqa.py --config.method=full,h2mt
    python train.py --config=configs/narrativeqa.py:tiny
"""

from configs.common import longbench_dataset


def get_config(arg: str | None = None):
    return longbench_dataset("narrativeqa", arg)
