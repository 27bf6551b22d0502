"""H²MT on LongBench qasper (through LongBench's jsonl; gold = sentences containing an answer).

    python train.py --config=configs/qasper.py --config.data.path=LongBench/data/qasper.jsonl
    python evaluate.py --config=configs/qasper.py --config.method=full,h2mt
    python train.py --config=configs/qasper.py:tiny
"""

from configs.common import longbench_dataset


def get_config(arg: str | None = None):
    return longbench_dataset("qasper", arg)
