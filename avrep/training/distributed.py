"""Multi-process (multi-host) initialisation."""

from __future__ import annotations

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Calls ``jax.distributed.initialize`` when a multi-process run is asked for.

    Explicit arguments start a run on given hosts (localhost tests included); ``auto`` lets JAX
    detect a TPU pod or SLURM/Open MPI cluster. Must run before any other JAX call.
    """
    if not auto and coordinator_address is None and not num_processes:
        return
    # CPU backends need an explicit collectives implementation for cross-process all-reduces;
    # the option is ignored by GPU/TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if auto:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
