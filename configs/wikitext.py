"""HMT memory pretraining on WikiText (stage A of DESIGN.md §4.2.6; the HMT objective).

    python train.py --config=configs/wikitext.py \
        --config.data.path=../shared/data/wikitext2/wiki.test.raw
    python train.py --config=configs/wikitext.py:tiny
"""

from configs.common import ConfigError, base_config, shared_file, tiny

DEFAULT = shared_file("wikitext2", "wiki.test.raw")  # "": the hub


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "hmt_lm"
    c.workdir = "runs/wikitext"
    c.data.source = "wikitext"
    c.data.path = DEFAULT
    c.train.steps = 100
    c.train.batch_size = 1
    c.train.lr = 2e-3
    c.train.bptt_depth = 3
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/wikitext-tiny"
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/wikitext.py (known: tiny)")
    return c
