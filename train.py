"""Trains H²MT (or HMT) memory parameters. The logic lives in h2mt_jax.train; this stays short.

    python train.py --config=configs/demo.py                 # the embedded default (CPU)
    python train.py --config=configs/hotpotqa.py:tiny        # any config, any variant
    python train.py --config=configs/demo.py --config.train.lr=1e-3 --config.workdir=runs/x
"""

from absl import flags, logging
from ml_collections import config_flags

from h2mt_jax.cli import run
from h2mt_jax.io import dumps

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Training configuration.")
flags.DEFINE_string("workdir", None, "Overrides config.workdir.")


def table(results: dict, start: str = "") -> str:
    """A Markdown table of the evaluation before and after training (`start`: the checkpoint
    the run started from, which names the "before" row; else "untrained")."""
    before = f"before ({start})" if start else "untrained"
    rows = [(name, res) for name, res in ((before, results.get("before")),
                                          ("trained", results.get("after"))) if res]
    if not rows:
        return ""
    keys = [k for k in rows[0][1] if isinstance(rows[0][1][k], (int, float))]
    head = "| parameters | " + " | ".join(keys) + " |"
    sep = "|" + "---|" * (len(keys) + 1)
    body = ["| " + name + " | " + " | ".join(f"{res.get(k, float('nan')):.3g}" for k in keys)
            + " |" for name, res in rows]
    return "\n".join([head, sep, *body])


def main(argv):
    del argv
    from h2mt_jax.train.trainer import train_and_evaluate

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    workdir = flags.FLAGS.workdir or config.workdir
    results = train_and_evaluate(config, workdir)
    if "preempted_at" in results:
        return
    print(table(results, config.checkpoint))
    print(dumps({k: v for k, v in results.items() if k != "train_losses"}))


if __name__ == "__main__":
    run(main)
