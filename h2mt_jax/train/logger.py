"""Training metrics: a JSON-lines file, TensorBoard scalars (tensorboardX) and a progress bar."""

from __future__ import annotations

import json
import os
import time


class MetricsLogger:
    """Appends `{"step", "time", **scalars}` to `workdir/metrics.jsonl` and writes TensorBoard
    scalars under `workdir/tensorboard` (skipped when tensorboardX is not installed)."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
        clean = {k: float(v) for k, v in scalars.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), "split": prefix, **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
