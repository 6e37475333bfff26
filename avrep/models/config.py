"""Building Linen modules from config blocks, and checking their field values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Config key model.dtype: the computation dtype (avrep.nn.precision), applied by the task to a whole model's
# parameters and inputs (Flax's dtype / param_dtype policy in one place), so not a field of any module.
PRECISION_KEY = "dtype"


def module_from_config(cls: type, cfg: Mapping[str, Any], owner: str):
    """``cls(**cfg)``, raising a ValueError that names unknown keys (``owner`` says which config).

    Lists become tuples: a config read back from a checkpoint's JSON holds lists where the
    module's fields (layer widths) are tuples. ``PRECISION_KEY`` is skipped.
    """
    cfg = {k: v for k, v in cfg.items() if k != PRECISION_KEY}
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {unknown}; expected a subset of {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


def check_choice(module, field: str, choices) -> None:
    """ValueError naming ``Module.field`` unless its value is one of ``choices``."""
    value = getattr(module, field)
    if value not in choices:
        raise ValueError(f"{type(module).__name__}.{field}={value!r}: expected one of {tuple(choices)}")
