"""Training checkpoints: the run layout of ``avrep.runs`` plus what resuming needs (optimizer state, step,
the Grain iterator state). Reading a trained run is ``avrep.runs``'s job; this module only writes and resumes.

Every committed step gets a checksum file (``avrep.runs.write_checksums``, from Orbax's post-finalisation
callback), and a resume takes the newest step that matches it: damaged steps are named, moved aside and the
next older one is used, or the run stops with one line when none is intact.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from avrep import runs
from avrep.runs import CHECKPOINT_SUBDIR, CheckpointError


def _restore_args(abstract_variables: Any, abstract_opt_state: Any, data_iter: grain.DatasetIterator) -> dict:
    return dict(
        variables=ocp.args.StandardRestore(abstract_variables),
        train=ocp.args.StandardRestore({"step": 0, "opt_state": abstract_opt_state}),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
    )


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` so a later move to Orbax V1 stays local."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)
        self._async = async_save
        self._pending: set[int] = set()  # saved steps whose checksums are not yet written
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
            # Called in Orbax's finalising thread once a save has committed.
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums) if async_save else None,
        )
        with runs.quiet_orbax():
            self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _write_checksums(self, all_done: bool = False) -> None:
        """Checksums of the committed steps. From Orbax's callback a step directory may still carry its temporary
        name (it is then done at the next save's callback, or by ``wait``); ``all_done``: no save is in flight."""
        if jax.process_index() != 0:
            return
        written = []
        for step in sorted(self._pending):
            step_dir = os.path.join(self.directory, str(step))
            if os.path.isdir(step_dir):
                runs.write_checksums(step_dir)
                written.append(step)
        # Steps older than one just written, or any step once nothing is in flight: committed, and gone if not
        # found (removed by max_to_keep).
        self._pending = {s for s in self._pending if s not in written and not all_done and s > max(written or [-1])}

    def save(
        self,
        step: int,
        variables: Any,
        opt_state: Any,
        data_iter: grain.DatasetIterator,
        config: ml_collections.ConfigDict,
    ) -> None:
        self._pending.add(step)
        with runs.quiet_orbax():
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(variables),
                    train=ocp.args.StandardSave({"step": step, "opt_state": opt_state}),
                    data_iter=grain.checkpoint.CheckpointSave(data_iter),
                    config=ocp.args.JsonSave(config.to_dict()),
                ),
            )
        if not self._async:
            self._write_checksums(all_done=True)

    def restore(
        self, step: int, abstract_variables: Any, abstract_opt_state: Any, data_iter: grain.DatasetIterator
    ) -> tuple[Any, Any]:
        """Restores variables and optimizer state onto their target shardings, and the iterator in place."""
        items = _restore_args(abstract_variables, abstract_opt_state, data_iter)
        with runs.quiet_orbax():
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["variables"], restored["train"]["opt_state"]

    def _unreadable_item(self, step: int, abstract_variables, abstract_opt_state, data_iter) -> str:
        """Which item of a step fails to restore (Orbax's error does not say), for the message."""
        items = _restore_args(abstract_variables, abstract_opt_state, data_iter)
        for name, args in items.items():
            try:
                with runs.quiet_orbax():
                    self._manager.restore(step, args=ocp.args.Composite(**{name: args}))
            except Exception:  # noqa: BLE001 - any failure names the item
                return f"{name}/"
        return "the step"

    def intact_latest_step(self) -> int | None:
        """The latest step if its checksums match (None if there is none, or it is unverified or damaged)."""
        step = self.latest_step()
        try:
            return step if step is not None and runs.verify_checkpoint(self.directory, step) else None
        except CheckpointError:
            return None

    def restore_latest(
        self,
        abstract_variables: Any,
        abstract_opt_state: Any,
        data_iter: grain.DatasetIterator,
        log: Callable[[str], None] = print,
    ) -> tuple[int, Any, Any]:
        """(step, variables, opt_state) of the newest intact checkpoint, or (0, None, None) for a fresh run.

        A step whose files do not match its checksums (or, written without checksums, cannot be read) is named,
        and the next older step is tried; the damaged ones are moved aside once an intact step is found (so new
        saves are not mistaken for older than them). Raises ``CheckpointError`` naming every step's problem when
        none is intact. A verified step that fails to restore is not damaged but incompatible (another config):
        that error is raised as it is."""
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                verified = runs.verify_checkpoint(self.directory, step)
            except CheckpointError as e:
                damaged.append((step, str(e)))
                log(f"[avrep] {e}")
                continue
            try:
                variables, opt_state = self.restore(step, abstract_variables, abstract_opt_state, data_iter)
            except Exception as e:  # a damaged file raises JSON, Orbax or TensorStore errors alike
                if verified:
                    raise
                cause = (str(e).strip().splitlines() or [""])[0][:300]
                item = self._unreadable_item(step, abstract_variables, abstract_opt_state, data_iter)
                message = (
                    f"checkpoint step {step} ({os.path.join(self.directory, str(step))}) has no checksums and "
                    f"its {item} cannot be read ({type(e).__name__}: {cause})"
                )
                damaged.append((step, message))
                log(f"[avrep] {message}")
                continue
            if damaged:
                self._set_aside(damaged, log)
                log(f"[avrep] falling back to step {step}, the newest intact checkpoint")
            return step, variables, opt_state
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint under {self.directory}: "
                + "; ".join(message for _, message in damaged)
                + " (move the run aside to start afresh)"
            )
        return 0, None, None

    def _set_aside(self, damaged: list[tuple[int, str]], log: Callable[[str], None]) -> None:
        if jax.process_index() == 0:
            for step, _ in damaged:
                moved_to = runs.quarantine_checkpoint(self.directory, step)
                log(f"[avrep] moved damaged checkpoint step {step} to {moved_to}")
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("avrep:checkpoints_set_aside")
        self._manager.reload()

    def wait(self) -> None:
        with runs.quiet_orbax():
            self._manager.wait_until_finished()
        self._write_checksums(all_done=True)

    def close(self) -> None:
        self.wait()
        with runs.quiet_orbax():
            self._manager.close()
