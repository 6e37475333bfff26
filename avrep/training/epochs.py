"""Schedules stated in epochs (as the papers state them), converted to optimizer steps at run time.

A config may give any of the ``*_epochs`` keys of ``EPOCH_KEYS`` instead of the step key beside it; ``train``
converts them once the training split is open, from its size and the global batch, and prints the result. An
epoch is one pass over the examples the pipeline draws from: the training utterances for sequence and VQ-MAE
models (the authors' code draws one window per utterance per epoch), every frame of them for the tokenizers
(``Task.epoch_size``). Batches run across epoch boundaries (the pipeline repeats before batching), so E epochs
of N examples at batch B are ceil(E * N / B) steps. ``train.steps_per_epoch`` (0: from the split) fixes an epoch's
length instead, where a recipe defines its epoch by iterations (the VQ-MAE-AV code's visual tokenizer: 15000).
"""

from __future__ import annotations

import copy
import math

import ml_collections

# (key in epochs, key in steps it sets). decay_steps: the cosine's horizon when it differs from the run's length
# (the VQ-MAE code decays over 800 epochs and stops at 140); decay_every: StepLR's period (the MDVAE code).
EPOCH_KEYS = (
    ("train.num_epochs", "train.num_steps"),
    ("train.checkpoint_every_epochs", "train.checkpoint_every"),
    ("optimizer.warmup_epochs", "optimizer.warmup_steps"),
    ("optimizer.decay_epochs", "optimizer.decay_steps"),
    ("optimizer.decay_every_epochs", "optimizer.decay_every"),
)


def epochs_to_steps(epochs: float, examples_per_epoch: int, global_batch: int) -> int:
    """The optimizer steps that draw ``epochs`` passes over ``examples_per_epoch`` examples, ``global_batch`` at a
    time (at least 1 for a positive number of epochs)."""
    if examples_per_epoch <= 0 or global_batch <= 0:
        raise ValueError(
            f"epochs_to_steps: expected positive sizes, got {examples_per_epoch} examples per epoch and "
            f"a global batch of {global_batch}"
        )
    if epochs <= 0:
        return 0
    return max(1, math.ceil(epochs * examples_per_epoch / global_batch - 1e-9))


def _get(config: ml_collections.ConfigDict, key: str):
    block, field = key.split(".")
    return config[block].get(field, 0) if block in config else 0


def epoch_keys(config: ml_collections.ConfigDict) -> dict[str, float]:
    """The config's schedule keys given in epochs (non-zero), checked to be numbers >= 0."""
    found = {}
    for key, _ in EPOCH_KEYS:
        value = _get(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"config key {key}={value!r}: expected a number of epochs >= 0 (0: use the step key)")
        if value:
            found[key] = float(value)
    return found


def resolve_epochs(
    config: ml_collections.ConfigDict, examples_per_epoch: int, global_batch: int
) -> tuple[ml_collections.ConfigDict, str]:
    """A copy of ``config`` with every step key set from its epoch key, and one line saying what was derived."""
    given = epoch_keys(config)
    fixed = _get(config, "train.steps_per_epoch")
    if fixed:
        if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 0:
            raise ValueError(
                f"config key train.steps_per_epoch={fixed!r}: expected an integer >= 0 (0: from the split)"
            )
        examples_per_epoch = fixed * global_batch
    config = copy.deepcopy(config)  # ConfigDict(config) would share the nested blocks with the caller's
    parts = []
    with config.unlocked():
        for key, step_key in EPOCH_KEYS:
            if key in given:
                block, field = step_key.split(".")
                if config[block].get(field, 0):
                    raise ValueError(
                        f"config keys {key}={given[key]:g} and {step_key}={config[block][field]} are both set: "
                        f"give one (set the other to 0)"
                    )
                steps = epochs_to_steps(given[key], examples_per_epoch, global_batch)
                config[block][field] = steps
                parts.append(f"{key}={given[key]:g} -> {step_key}={steps}")
    per_epoch = examples_per_epoch / global_batch
    line = (
        f"{examples_per_epoch} examples per epoch at a global batch of {global_batch} ({per_epoch:.1f} steps per "
        f"epoch): " + ", ".join(parts)
    )
    if "optimizer.warmup_epochs" not in given and "optimizer" in config:  # the warm-up is always stated
        line += f"; warm-up {int(config.optimizer.get('warmup_steps', 0))} steps"
    return config, line
