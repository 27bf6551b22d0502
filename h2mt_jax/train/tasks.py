"""The training tasks by name (`config.task`). A task gives the trainer its data (`dataset`),
parameters (`init`, `frozen`), loss, export and evaluation; see `h2mt_qa`, `memory_lm` and `hmt_lm`."""

from __future__ import annotations

from h2mt_jax.errors import ConfigError
from h2mt_jax.train.h2mt_qa import H2MTQATask
from h2mt_jax.train.hmt_lm import HMTLMTask
from h2mt_jax.train.memory_lm import MemoryLMTask

TASKS = {"h2mt_qa": H2MTQATask, "hmt_lm": HMTLMTask, "memory_lm": MemoryLMTask}


def make_task(config, lm=None, progress: bool = True, workdir: str | None = None):
    """The task of `config.task`; `workdir` lets a task keep derived data (training indexes)
    beside its checkpoints."""
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
    cls = TASKS[config.task]
    if cls is H2MTQATask:
        return cls(config, lm=lm, progress=progress, workdir=workdir)
    return cls(config, lm=lm, progress=progress)
