"""Building Linen modules from config blocks, and checking their field values."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def module_from_config(cls: type, cfg: Mapping[str, Any], owner: str):
    """``cls(**cfg)``, raising a ValueError that names unknown keys (``owner`` says which config).

    Lists become tuples: a config read back from a checkpoint's JSON holds lists where the
    module's fields (layer widths) are tuples.
    """
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
