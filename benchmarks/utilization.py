"""Model FLOPs utilisation (MFU): a compiled step's FLOPs (XLA's cost analysis) per second, as a fraction of the
device's peak for the step's computation dtype.

Peaks are dense (no sparsity), per chip, from the vendors' data sheets. On GPUs a float32 step's matmuls run on
TF32 tensor cores (XLA's default matmul precision there), so float32 is measured against the TF32 peak; TPUs
compute float32 matmuls with bfloat16 passes by default, so both dtypes use the bfloat16 peak. On CPU the peak is
this machine's measured ceiling: a 2048³ float32 matmul timed in JAX (:func:`cpu_matmul_ceiling`), for either
dtype (XLA's CPU backend has no faster bfloat16 path).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# device_kind substring (lower case, most specific first) -> {dtype: peak FLOP/s}
PEAK_FLOPS = (
    ("h200", {"bfloat16": 989e12, "float32": 494.7e12}),  # H200 SXM: the H100 SXM's compute
    ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
    ("h100", {"bfloat16": 989e12, "float32": 494.7e12}),  # H100 SXM: BF16 989, TF32 495 TFLOP/s dense
    ("a100", {"bfloat16": 312e12, "float32": 156e12}),  # A100: BF16 312, TF32 156
    ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),  # v5e reports itself as "TPU v5 lite"
    ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),  # v5p reports itself as "TPU v5"
)


@functools.cache
def cpu_matmul_ceiling(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n³ float32 matmul in JAX on the default CPU device (best of ``repeats``, after a warm-up)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of one ``device`` for ``dtype``, where the number comes from); NaN for an unknown device."""
    if device.platform == "cpu":
        return cpu_matmul_ceiling(), "measured 2048^3 float32 matmul in JAX"
    kind = getattr(device, "device_kind", "").lower()
    for name, peaks in PEAK_FLOPS:
        if name in kind:
            return peaks["bfloat16" if dtype == "bfloat16" else "float32"], f"data sheet ({name}, dense)"
    return float("nan"), f"unknown device kind {kind!r}"


def step_flops(compiled) -> float:
    """FLOPs of one call of a compiled function (per device), from XLA's cost analysis (NaN if it has none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan")))


def utilization(flops: float, seconds: float, dtype: str, device=None) -> dict:
    """``mfu`` (FLOPs / seconds / peak) with the peak used and its source, for a step on ``device``."""
    device = device or jax.devices()[0]
    peak, source = peak_flops(device, dtype)
    return {
        "mfu": round(flops / seconds / peak, 4) if np.isfinite(peak) else None,
        "peak_tflops": round(peak / 1e12, 3),
        "peak_source": source,
    }
