"""Mixed precision: the computation dtype named by config key ``model.dtype``, and the casts around it.

``"float32"``, ``"bfloat16"``, or ``"auto"``: float32 on CPU (XLA's CPU backend emulates bfloat16 matmuls and
convolutions, so they are slower there, not faster), bfloat16 on GPU and TPU.

The policy is Flax's ``dtype=bfloat16, param_dtype=float32`` applied once for a whole model instead of layer by
layer (the same computation: a Flax layer casts its float32 parameters and its input to ``dtype`` before
computing): parameters and optimizer state stay float32; a task casts the parameters and the model's inputs to
the computation dtype (:func:`cast_floating`) at the start of its loss, and the model's outputs back to float32
before the loss terms. Inside the models, the places where bfloat16 is not safe compute in float32 themselves:
attention's softmax statistics (``avrep.nn.attention``), the EMA codebook's distances and statistics
(``avrep.nn.quantizer``), batch- and layer-normalisation statistics (``avrep.nn.layers.BatchNorm``; flax's
``LayerNorm`` reduces in float32), Gaussian sampling and KLs (``avrep.nn.gaussian``) and every loss
(``avrep.nn.losses``, cast by the tasks). Gradients reach the float32 parameters through the casts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "auto")


def compute_dtype(name: str = "float32", platform: str | None = None) -> jnp.dtype:
    """The computation dtype for config value ``name`` on ``platform`` (default: JAX's default backend)."""
    if name not in DTYPES:
        raise ValueError(f"config key model.dtype={name!r}: expected one of {DTYPES}")
    if name == "auto":
        name = "float32" if (platform or jax.default_backend()) == "cpu" else "bfloat16"
    return jnp.dtype(name)


def cast_floating(tree, dtype):
    """Every floating-point leaf of ``tree`` as ``dtype`` (integer and boolean leaves unchanged)."""

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(cast, tree)


def at_least_float32(x):
    """``x`` (an array or a Python number) in float32, or wider if it is wider: statistics and losses."""
    return jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32))
