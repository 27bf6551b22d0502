"""Trains HMT / H²MT memory parameters. Usage: python train.py --config=configs/demo.py"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Training configuration.")


def main(argv):
    del argv
    config = _CONFIG.value
    print(f"train.py: training is not yet implemented (config backbone={config.backbone}); "
          "see the pipeline issue.")


if __name__ == "__main__":
    app.run(main)
