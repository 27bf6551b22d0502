"""The training loop: sharded jitted steps, orbax checkpoints, exact resume, preemption.

`train_and_evaluate(config, workdir)` trains the task of `config` and returns its evaluation.
- The step is `jax.jit` with explicit shardings over a `(data, fsdp, tensor)` mesh; frozen
  backbone weights are an argument (never baked into the program as constants).
- Checkpoints (`workdir/checkpoints`) hold step, trainable parameters, optimizer state and the
  input pipeline's position; with `config.resume` a run continues exactly where the last good
  checkpoint left off (same batches, same losses). SIGTERM (TPU preemption) saves and exits.
- Metrics go to `workdir/metrics.jsonl`, TensorBoard and the progress bar.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

from h2mt_jax.io import write_json
from h2mt_jax.train import sharding
from h2mt_jax.train.checkpoint import Checkpointer
from h2mt_jax.train.logger import MetricsLogger


def make_optimizer(t) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine (or constant) decay and global-norm clipping."""
    steps = max(int(t.steps), 2)
    warmup = max(1, min(int(t.warmup), steps - 1))
    if t.get("decay", "cosine") == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, t.lr, warmup, steps, t.lr * 0.1)
    else:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup),
                                         optax.constant_schedule(t.lr)], [warmup])
    return optax.chain(optax.clip_by_global_norm(t.clip),
                       optax.adamw(schedule, weight_decay=t.weight_decay))


def make_step(task, optimizer):
    """`step(state, frozen, batch) -> (state, metrics)`, pure."""

    def step(state, frozen, batch):
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            state["trainable"], frozen, batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        return {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state}, metrics

    return step


class Preemption:
    """Sets `.requested` on SIGTERM so the loop can save and exit at a step boundary."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def state_shardings(state: dict, mesh) -> dict:
    """Shardings of the train state: backbone-shaped leaves (the backbone itself and its
    optimizer moments) by the logical rules, everything else replicated."""
    return {"step": sharding.replicated(state["step"], mesh),
            "trainable": {k: (sharding.param_shardings(v, mesh) if k == "backbone"
                              else sharding.replicated(v, mesh))
                          for k, v in state["trainable"].items()},
            "opt_state": sharding.param_shardings(state["opt_state"], mesh)}


def batches(data, prefetch: int = 4):
    """The training iterator over `data` (a grain `MapDataset` of batches), reading at most
    `prefetch` batches ahead on one thread. grain's default reads 500 ahead on 16 threads: an
    H²MT QA batch holds its documents' node memories (`[b, nodes, m, d]` float32, tens of MB at
    m = 64), and 500 of them filled 24 GB before the first step."""
    import grain

    if isinstance(prefetch, bool) or int(prefetch) != prefetch or prefetch < 1:
        raise ValueError(f"train.prefetch must be a whole number of batches >= 1, got {prefetch!r}")
    return iter(data.to_iter_dataset(grain.ReadOptions(
        num_threads=1, prefetch_buffer_size=int(prefetch))))


def init_state(task, optimizer, mesh, key):
    """(state, its shardings, frozen params placed on the mesh)."""
    trainable = task.init(key)
    state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable,
             "opt_state": optimizer.init(trainable)}
    shardings = state_shardings(state, mesh)
    frozen = task.frozen()
    return (jax.device_put(state, shardings), shardings,
            jax.device_put(frozen, sharding.param_shardings(frozen, mesh)))


def compile_step(task, optimizer, state_sh, frozen, mesh, batch):
    """The jitted step with explicit in/out shardings (state donated)."""
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
    batch_sh = sharding.batch_shardings(batch, mesh)
    return jax.jit(make_step(task, optimizer), in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, None), donate_argnums=(0,)), batch_sh


def train_and_evaluate(config, workdir: str, task=None, progress: bool = True) -> dict:
    """Trains `config.task` for `config.train.steps` steps in `workdir`; returns the results."""
    from h2mt_jax.train.tasks import make_task

    sharding.initialize_distributed(config.mesh.get("distributed", False))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=1))
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    task = task or make_task(config, progress=progress, workdir=workdir)
    t = config.train
    optimizer = make_optimizer(t)
    results = {}
    if config.eval.get("before_training", False):
        results["before"] = task.evaluate(task.init(jax.random.PRNGKey(config.seed)))

    state, state_sh, frozen = init_state(task, optimizer, mesh, jax.random.PRNGKey(config.seed))
    data = task.dataset()
    it = batches(data, t.get("prefetch", 4))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), t.get("max_to_keep", 3))
    start_step = 0
    if config.resume:
        restored = ckpt.restore_latest(jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, state_sh))
        if restored is not None:
            start_step, state, data_state = restored
            it.set_state(data_state)
            if progress:
                print(f"resumed from step {start_step} in {ckpt.directory}")
    step_fn = batch_sh = None
    logger = MetricsLogger(workdir)
    stop = Preemption()
    losses = []
    bar = tqdm(range(start_step, t.steps), desc=f"training {task.name}", disable=not progress,
               initial=start_step, total=t.steps)
    every = max(1, int(t.get("checkpoint_every", 100)))
    try:
        for step in bar:
            batch = next(it)
            if step_fn is None:
                step_fn, batch_sh = compile_step(task, optimizer, state_sh, frozen, mesh, batch)
            batch = jax.device_put(batch, batch_sh)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, frozen, batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            metrics["step_s"] = time.perf_counter() - t0
            losses.append(metrics["loss"])
            results.setdefault("first_step", start_step)
            logger.write(step + 1, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            done = step + 1
            if t.get("stop_after", 0) and done >= start_step + t.stop_after:
                stop.requested = True  # a simulated preemption (tests, time-boxed runs)
            if done % every == 0 or done == t.steps or stop.requested:
                ckpt.save(done, state, it.get_state())
            if stop.requested:
                if progress:
                    print(f"SIGTERM: saved step {done} to {ckpt.directory}; exiting")
                results["preempted_at"] = done
                return results
    finally:
        stop.restore()
        ckpt.close()
        logger.close()
    trained = jax.device_get(state["trainable"])
    task.export(trained, os.path.join(workdir, "model"))
    results["train_losses"] = losses
    if config.eval.get("after_training", True):
        results["after"] = task.evaluate(trained)
        logger = MetricsLogger(workdir)
        logger.write(int(t.steps), {k: v for k, v in results["after"].items()
                                    if isinstance(v, (int, float))}, prefix="eval")
        logger.close()
    write_json(os.path.join(workdir, "results.json"),
               {k: v for k, v in results.items() if k != "train_losses"})
    return results
