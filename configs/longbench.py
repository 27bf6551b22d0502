"""Any LongBench v1 QA file (local jsonl): training on found gold, or evaluation.

    python evaluate.py --config=configs/longbench.py --config.data.path=FILE.jsonl \
        --config.method=h2mt --config.output=OUT.json [--config.checkpoint=DIR]
    python train.py --config=configs/longbench.py --config.data.path=FILE.jsonl
"""

from configs.common import ConfigError, base_config, shared_file, tiny

DEFAULT = shared_file("longbench", "hotpotqa.jsonl")  # "": the hub


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/longbench"
    c.data.source = "longbench"
    c.data.path = DEFAULT
    c.data.held_out = 0.3
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/longbench-tiny"
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/longbench.py (known: tiny)")
    return c
