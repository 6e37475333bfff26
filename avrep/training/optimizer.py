"""Optimizers and learning-rate schedules from the config's ``optimizer`` block."""

from __future__ import annotations

from typing import Mapping

import optax


def make_schedule(cfg: Mapping, num_steps: int) -> optax.Schedule:
    lr = float(cfg["learning_rate"])
    warmup = int(cfg.get("warmup_steps", 0))
    kind = cfg.get("schedule", "constant")
    # The cosine's horizon: the run's length, or decay_steps where it differs (the VQ-MAE code's 800 epochs).
    horizon = int(cfg.get("decay_steps", 0)) or num_steps
    if kind == "constant":
        return optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(horizon, warmup + 1), end_value=lr * float(cfg.get("final_fraction", 0.0))
        )
    if kind == "step":  # StepLR as in the MDVAE code: lr * gamma^(step // every)
        return optax.exponential_decay(lr, int(cfg["decay_every"]), float(cfg["decay_rate"]), staircase=True)
    raise ValueError(f"config key optimizer.schedule must be 'constant', 'cosine' or 'step', got {kind!r}")


def make_optimizer(cfg: Mapping, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, num_steps)
    name = cfg.get("name", "adam")
    b1, b2 = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999))
    if name == "adam":
        tx = optax.adam(schedule, b1=b1, b2=b2)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=float(cfg.get("weight_decay", 0.0)))
    else:
        raise ValueError(f"config key optimizer.name must be 'adam' or 'adamw', got {name!r}")
    clip = float(cfg.get("grad_clip_norm", 0.0))
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule
