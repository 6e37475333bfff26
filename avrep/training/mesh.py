"""Device mesh, shardings and host-to-device batch transfer (jax.jit + NamedSharding, no pmap)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")  # batch is split over both; params, optimizer and model state over "fsdp"
# Arrays smaller than this stay replicated under fsdp: splitting them saves little memory and adds collectives.
FSDP_MIN_SIZE = 2**14


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
    """Builds a ('data', 'fsdp') mesh; a size of -1 takes all remaining devices.

    ``mesh_config`` is e.g. {"data": -1, "fsdp": 1}; ``num_devices`` > 0 restricts the mesh to
    the first devices (tests compare an 8-device run with a 1-device run in one process).
    """
    devices = list(jax.devices() if devices is None else devices)
    limit = int(mesh_config.get("num_devices", 0) or 0)
    if limit:
        if limit > len(devices):
            raise ValueError(f"config key mesh.num_devices={limit} but only {len(devices)} devices exist")
        devices = devices[:limit]
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in DATA_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"config key mesh: at most one axis may be -1, got {dict(sizes)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"config key mesh: {len(devices)} devices not divisible by fixed axes {sizes}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"config key mesh: axis sizes {sizes} must multiply to the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape([sizes[a] for a in DATA_AXES]), DATA_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """big_vision's "fsdp" rule: an array of at least ``min_size`` elements is split over the ``fsdp`` axis along
    its largest dimension that ``fsdp`` divides (the first such on ties); other arrays are replicated."""
    if fsdp <= 1 or math.prod(shape) < min_size:
        return P()
    divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda i: (shape[i], -i))
    return P(*(["fsdp" if i == axis else None for i in range(len(shape))]))


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """``NamedSharding`` for every array of ``tree`` (parameters, optimizer or model state; arrays or shape
    structs): split over the mesh's ``fsdp`` axis by :func:`fsdp_spec`, replicated when that axis has size 1.
    XLA then gathers each layer's parameters where the step uses them and reduce-scatters their gradients
    (ZeRO-3 / FSDP), so each device holds 1/fsdp of the large arrays."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp)), tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles per-process host batches into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
