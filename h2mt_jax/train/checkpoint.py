"""Orbax checkpoints of the training state plus the input pipeline's position.

A checkpoint holds `state` (step, trainable parameters, optimizer state) and `data` (the
iterator state, JSON). Orbax writes to a temporary directory and commits atomically, so a crash
mid-save never leaves a checkpoint that looks complete; a damaged one (e.g. truncated files)
fails to restore and the previous step is used instead, with a warning.
"""

from __future__ import annotations

import os
import warnings

import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                                 create=True))

    def save(self, step: int, state, data_state: dict, wait: bool = True) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state):
        """(step, state, data_state) of the newest checkpoint that restores, or None."""
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["data"])
            except Exception as e:  # damaged: fall back to the previous checkpoint
                warnings.warn(f"checkpoint at step {step} in {self.directory} could not be "
                              f"restored ({type(e).__name__}: {str(e)[:200]}); trying the "
                              "previous one", stacklevel=2)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
