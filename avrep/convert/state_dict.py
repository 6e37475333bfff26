"""PyTorch ``state_dict`` -> Flax parameters, by name.

Reading: ``.npz`` archives (one array per state_dict key, ``np.load(allow_pickle=False)``) or ``.pt``
files through an optional ``torch`` import with ``torch.load(path, map_location="cpu",
weights_only=True)`` (tensors and plain containers only: never a pickle of arbitrary objects). A
training checkpoint dict holding the weights under ``model_state_dict`` / ``state_dict`` is
unwrapped.

Mapping (:func:`torch_to_flax`): a key ``a.b.leaf`` becomes the path ``a/b/<leaf>``:

* ``weight`` (2-D, ``nn.Linear``) -> ``kernel`` = weight transposed, ``bias`` -> ``bias``;
* recurrent tensors ``{weight,bias}_{ih,hh}_l0[_reverse]`` (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, one
  layer) -> ``{weight,bias}_{ih,hh}[_reverse]``, unchanged (avrep's recurrent layers keep torch's
  layout);
* anything else is refused, naming the key.

:func:`check_against` compares the result with a model's expected parameter shapes: a missing or an
unexpected tensor, or a shape mismatch, raises a ValueError naming the torch key, the Flax path and
both shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_RECURRENT = re.compile(r"^(weight|bias)_(ih|hh)_l0(_reverse)?$")
_CHECKPOINT_KEYS = ("model_state_dict", "state_dict", "model")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{key: array} from a ``.npz`` archive or a ``.pt`` / ``.pth`` / ``.ckpt`` torch file."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path}: reading a torch file needs PyTorch (pip install torch); or save its state_dict as "
            ".npz (one array per key) and load that"
        ) from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def flax_path(key: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], bool]:
    """(Flax path, transpose?) of torch state_dict ``key`` with ``shape``; ValueError if not mappable."""
    *parents, leaf = key.split(".")
    if _RECURRENT.match(leaf):
        return (*parents, leaf.replace("_l0", "")), False
    if leaf == "weight":
        if len(shape) != 2:
            raise ValueError(f"{key}: a {len(shape)}-D weight {shape}; only Linear (2-D) weights are mapped")
        return (*parents, "kernel"), True
    if leaf == "bias":
        return (*parents, "bias"), False
    raise ValueError(f"{key}: no Flax counterpart for a torch tensor named {leaf!r}")


def torch_to_flax(state_dict: Mapping[str, Any]) -> tuple[dict, dict[tuple[str, ...], str]]:
    """(nested Flax parameter dict, {Flax path: torch key}) from a torch state_dict."""
    params: dict = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        path, transpose = flax_path(key, value.shape)
        place(params, origin, path, key, value.T if transpose else value)
    return params, origin


def place(params: dict, origin: dict[tuple[str, ...], str], path: tuple[str, ...], key: str, value) -> None:
    """Puts ``value`` (from torch tensor ``key``) at ``path`` of the nested ``params``; two tensors never share one."""
    if path in origin:
        raise ValueError(f"{key} and {origin[path]} both map to {'/'.join(path)}")
    origin[path] = key
    node = params
    for p in path[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key}: {'/'.join(path)} lies under a tensor")
    node[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def check_against(
    params: Mapping,
    origin: Mapping[tuple[str, ...], str],
    expected: Mapping,
    *,
    owner: str = "checkpoint",
    torch_shapes: Mapping[tuple[str, ...], tuple[int, ...]] | None = None,
) -> None:
    """ValueError unless ``params`` has exactly the paths and shapes of ``expected`` (a nested dict of
    arrays or shape-dtype structs); messages name the torch key and both shapes. ``torch_shapes``: the
    torch shape of each converted path, where it is not the Flax shape (reversed for a ``kernel``)."""
    got, want = _flatten(params), _flatten(expected)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    problems = [f"missing {'/'.join(p)} (expected shape {tuple(want[p].shape)})" for p in missing]
    problems += [
        f"unexpected tensor {origin.get(p, '/'.join(p))} -> {'/'.join(p)} (shape {tuple(got[p].shape)})"
        for p in unexpected
    ]
    for p in sorted(set(got) & set(want)):
        if tuple(got[p].shape) != tuple(want[p].shape):
            key = origin.get(p, "/".join(p))
            if torch_shapes is not None and p in torch_shapes:
                torch_shape = tuple(torch_shapes[p])
            else:
                torch_shape = tuple(reversed(got[p].shape)) if p[-1] == "kernel" else tuple(got[p].shape)
            problems.append(
                f"shape mismatch: {key} has torch shape {torch_shape} -> {'/'.join(p)} {tuple(got[p].shape)}, "
                f"the model expects {tuple(want[p].shape)}"
            )
    if problems:
        raise ValueError(f"{owner}: " + "; ".join(problems))
