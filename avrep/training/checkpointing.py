"""Training checkpoints: the run layout of ``avrep.runs`` plus what resuming needs (optimizer state, step,
the Grain iterator state). Reading a trained run is ``avrep.runs``'s job; this module only writes and resumes.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp

from avrep.runs import CHECKPOINT_SUBDIR


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` so a later move to Orbax V1 stays local."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        variables: Any,
        opt_state: Any,
        data_iter: grain.DatasetIterator,
        config: ml_collections.ConfigDict,
    ) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                train=ocp.args.StandardSave({"step": step, "opt_state": opt_state}),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
        )

    def restore(
        self, step: int, abstract_variables: Any, abstract_opt_state: Any, data_iter: grain.DatasetIterator
    ) -> tuple[Any, Any]:
        """Restores variables and optimizer state onto their target shardings, and the iterator in place."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(abstract_variables),
                train=ocp.args.StandardRestore({"step": 0, "opt_state": abstract_opt_state}),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        )
        return restored["variables"], restored["train"]["opt_state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
