"""Evaluates methods on LongBench-style QA. Usage: python evaluate.py --config=configs/demo.py"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Evaluation configuration.")


def main(argv):
    del argv
    config = _CONFIG.value
    print(f"evaluate.py: evaluation is not yet implemented (config backbone={config.backbone}); "
          "see the pipeline issue.")


if __name__ == "__main__":
    app.run(main)
