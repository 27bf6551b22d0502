"""The embedded default: SmolLM2-135M-Instruct on the synthetic structured-document task.

    python train.py --config=configs/demo.py
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.backbone = "smollm2-135m-instruct"  # registry name, local path or hub id
    c.dtype = "float32"
    c.seed = 0
    c.workdir = "runs/demo"
    return c
