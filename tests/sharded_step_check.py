"""Run by test_pipeline.py in a process with 8 simulated CPU devices: one training step on a
(data=2, fsdp=2, tensor=2) mesh equals the same step on one device. Prints MAX_DIFF <value>."""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.demo import get_config  # noqa: E402
from h2mt_jax.train import sharding, trainer  # noqa: E402
from h2mt_jax.train.tasks import make_task  # noqa: E402


def one_step(task, config, mesh):
    opt = trainer.make_optimizer(config.train)
    state, state_sh, frozen = trainer.init_state(task, opt, mesh, jax.random.PRNGKey(0))
    batch = next(iter(task.dataset().to_iter_dataset()))
    step, batch_sh = trainer.compile_step(task, opt, state_sh, frozen, mesh, batch)
    state, metrics = step(state, frozen, jax.device_put(batch, batch_sh))
    kinds = {str(x.sharding.spec) for x in jax.tree.leaves(state["trainable"])}
    return jax.device_get(state["trainable"]), float(metrics["loss"]), kinds


def main():
    assert len(jax.devices()) == 8, jax.devices()
    c = get_config("tiny")
    c.train.batch_size = 8
    c.train.trainable = "all"  # the backbone is trained too, so its sharding is exercised
    task = make_task(c, progress=False)
    single, loss1, _ = one_step(task, c, sharding.make_mesh(devices=jax.devices()[:1]))
    sharded, loss8, kinds = one_step(task, c, sharding.make_mesh(2, 2, 2))
    assert any("tensor" in k for k in kinds) and any("fsdp" in k for k in kinds), kinds
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded))]
    print("LOSS", loss1, loss8)
    print("MAX_DIFF", max(max(diffs), abs(loss1 - loss8)))


if __name__ == "__main__":
    main()
