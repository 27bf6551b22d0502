"""The embedded default: train H²MT's memory parameters of SmolLM2-135M-Instruct on the
synthetic manuals task, then evaluate on held-out manuals (before and after training).

    python train.py --config=configs/demo.py
    python train.py --config=configs/demo.py:tiny          # two steps on a tiny random model
"""

from configs.common import ConfigError, base_config, tiny


def get_config(arg: str | None = None):
    c = base_config()
    c.workdir = "runs/demo"
    c.data.source = "synthetic"
    # Sized for the README's promise of at most 15 minutes on a 2-core CPU: building the 16
    # training indexes takes about 2 minutes, a step of batch 4 about 3.5 s, each evaluation of
    # the 36 held-out questions (memory answers and tree_text answers) about 2.5 minutes.
    c.data.train_docs = 16
    c.data.eval_docs = 4
    c.train.steps = 100
    c.train.batch_size = 4
    c.train.lr = 3e-3
    c.train.weight_decay = 0.1
    c.train.trainable = "memory"
    c.eval.before_training = True
    c.eval.tree_text = True  # also answer from the routed leaves' text: what routing is worth
    if arg == "tiny":
        tiny(c)
        c.workdir = "runs/demo-tiny"
    elif arg:
        raise ConfigError(f"unknown variant {arg!r} of configs/demo.py (known: tiny)")
    return c
