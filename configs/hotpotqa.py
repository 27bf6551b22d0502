"""H²MT on HotpotQA distractor (local JSON in the Hugging Face layout; gold = supporting facts).

    python train.py --config=configs/hotpotqa.py \
        --config.data.path=../shared/data/hotpotqa/hotpot_dev_distractor_first100.json
    python train.py --config=configs/hotpotqa.py:tiny
"""

from configs.common import ConfigError, base_config, shared_file, tiny

DEFAULT = shared_file("hotpotqa", "hotpot_dev_distractor_first100.json")  # "": the hub


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/hotpotqa"
    c.data.source = "hotpotqa"
    c.data.path = DEFAULT
    c.h2mt.leaf_tokens = 96
    c.h2mt.k = 2
    c.train.trainable = "memory+lora"
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/hotpotqa-tiny"
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/hotpotqa.py (known: tiny)")
    return c
