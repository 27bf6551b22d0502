"""The embedded default: train H²MT's memory parameters of SmolLM2-135M-Instruct on the
synthetic manuals task, then evaluate on held-out manuals (before and after training).

    python train.py --config=configs/demo.py
    python train.py --config=configs/demo.py:tiny          # two steps on a tiny random model
"""

from configs.common import base_config, tiny


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/demo"
    c.data.source = "synthetic"
    c.data.train_docs = 40
    c.data.eval_docs = 5
    c.train.steps = 240
    c.train.batch_size = 4
    c.train.lr = 3e-3
    c.train.trainable = "memory"
    c.eval.before_training = True
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/demo-tiny"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/demo.py (known: tiny)")
    return c
