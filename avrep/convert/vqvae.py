"""The authors' released speech VQ-VAEs (VQ-MAE-S's tokenizers, code-mdvae's speech VQ-VAE) -> avrep's
``AudioVQVAE`` and its variables.

Their ``SpeechVQVAE`` is avrep's ``arch="code"`` audio network (``avrep.models.vqvae``): the same layers,
kernels, strides, paddings and tanh placements, so only sizes differ between checkpoints.
``infer_speech_vqvae_config(state_dict)`` reads them from the tensor shapes: codes and code dimension
(``_vq_vae._embedding.weight``), hidden width (``_encoder._conv_2``), residual width and number of
residual layers (``_residual_stack._layers.<i>._block.1``), BatchNorm or not (``_encoder.norm1``).
``speech_vqvae_variables(state_dict, model)`` maps every tensor by name and checks its shape against the
model; a mismatch, a missing or an unexpected tensor raises a ValueError naming the torch key and both
shapes. ``load_speech_vqvae(weights)`` does both from a file (``.npz`` or a torch file).

Tensor mapping (torch -> Flax path, layout):

* ``Conv1d.weight`` (out, in, k) -> ``kernel`` (k, in, out); ``ConvTranspose1d.weight`` (in, out, k) ->
  ``kernel`` (k, in, out) flipped along k (``avrep.nn.layers``); biases unchanged;
* ``_encoder._conv_{1,2,3}`` -> ``encoder/Conv_{0,1,2}``, ``_pre_vq_conv`` -> ``encoder/Conv_3``,
  ``_decoder._conv_1`` -> ``decoder/Conv_0``, ``_decoder._conv_trans_{1, 2_bis, 2}`` ->
  ``decoder/ConvTranspose_{0,1,2}``, residual layer i's ``_block.1`` / ``_block.3`` ->
  ``ResidualStack_0/Conv_{2i}`` / ``Conv_{2i+1}``;
* BatchNorm ``_encoder.norm{1,2,3}`` / ``_decoder.norm{1,2}_dec`` -> ``BatchNorm_{0,1,2}`` / ``{0,1}``:
  ``weight`` / ``bias`` -> ``params`` ``scale`` / ``bias``, ``running_mean`` / ``running_var`` ->
  ``batch_stats`` ``mean`` / ``var``; ``num_batches_tracked`` is dropped (momentum 0.1 never reads it);
* the EMA codebook ``_vq_vae._embedding.weight`` / ``_ema_w`` / ``_ema_cluster_size`` -> ``vq_ema/vq``
  ``codebook`` / ``embed_sum`` / ``cluster_size``. Their code stores the Laplace-smoothed counts, avrep
  the raw EMA counts; the two differ by O(epsilon = 1e-5) per code, and the codebook of the next EMA
  step is the same (``avrep.nn.quantizer``).

The imported model feeds linear power (``input_transform="none"``), keeps the authors' EMA recipe
(``restart_dead_codes=False``) and, with BatchNorm, PyTorch's running-variance update
(``unbiased_running_var=True``). Inference uses the running statistics unless ``batch_stats_mode="batch"``
(the authors' tokenisation; ``avrep.models.vqvae``, module doc).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avrep.convert.state_dict import check_against, load_state_dict
from avrep.models.vqvae import BATCH_STATS_MODES, build_vqvae

# Tensors every speech VQ-VAE state_dict has (to tell the family from others).
SIGNATURE = ("_encoder._conv_1.weight", "_pre_vq_conv.weight", "_vq_vae._embedding.weight", "_decoder._conv_1.weight")
# torch module -> (Flax side, module name, transposed conv?)
_CONVS = {
    "_encoder._conv_1": ("encoder", "Conv_0", False),
    "_encoder._conv_2": ("encoder", "Conv_1", False),
    "_encoder._conv_3": ("encoder", "Conv_2", False),
    "_pre_vq_conv": ("encoder", "Conv_3", False),
    "_decoder._conv_1": ("decoder", "Conv_0", False),
    "_decoder._conv_trans_1": ("decoder", "ConvTranspose_0", True),
    "_decoder._conv_trans_2_bis": ("decoder", "ConvTranspose_1", True),
    "_decoder._conv_trans_2": ("decoder", "ConvTranspose_2", True),
}
_NORMS = {
    "_encoder.norm1": ("encoder", "BatchNorm_0"),
    "_encoder.norm2": ("encoder", "BatchNorm_1"),
    "_encoder.norm3": ("encoder", "BatchNorm_2"),
    "_decoder.norm1_dec": ("decoder", "BatchNorm_0"),
    "_decoder.norm2_dec": ("decoder", "BatchNorm_1"),
}
_NORM_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_CODEBOOK = {
    "_vq_vae._embedding.weight": "codebook",
    "_vq_vae._ema_w": "embed_sum",
    "_vq_vae._ema_cluster_size": "cluster_size",
}
_RESIDUAL = re.compile(r"^_(encoder|decoder)\._residual_stack\._layers\.(\d+)\._block\.([13])\.weight$")


def is_speech_vqvae(state_dict: Mapping[str, Any]) -> bool:
    return all(k in state_dict for k in SIGNATURE)


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"state_dict: missing tensor {key}")
    return tuple(np.shape(sd[key]))


def _residual_layers(sd, side: str) -> list[int]:
    return sorted({int(m.group(2)) for k in sd if (m := _RESIDUAL.match(k)) and m.group(1) == side})


def infer_speech_vqvae_config(state_dict: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """``build_vqvae`` config ``{"modality": "audio", **fields}`` of a released speech VQ-VAE state_dict;
    ``overrides``: fields to set regardless (e.g. ``batch_stats_mode="batch"``)."""
    sd = state_dict
    if not is_speech_vqvae(sd):
        modules = sorted({k.split(".")[0] for k in sd})
        raise ValueError(
            f"state_dict: not a speech VQ-VAE (expected the tensors {list(SIGNATURE)} of the authors' "
            f"SpeechVQVAE; its top-level modules are {modules})"
        )
    first = _shape(sd, "_encoder._conv_1.weight")
    if len(first) != 3:
        raise ValueError(
            f"state_dict: _encoder._conv_1.weight has shape {first}, not a Conv1d weight (out, in, k); a visual "
            "VQ-VAE? Only the speech VQ-VAEs are imported"
        )
    num_codes, code_dim = _shape(sd, "_vq_vae._embedding.weight")
    hidden = _shape(sd, "_encoder._conv_2.weight")[0]
    encoder, decoder = _residual_layers(sd, "encoder"), _residual_layers(sd, "decoder")
    if encoder != list(range(len(encoder))) or decoder != encoder:
        raise ValueError(
            f"state_dict: residual layers {encoder} (encoder) and {decoder} (decoder); avrep's AudioVQVAE has the "
            "same number 0..n-1 in both"
        )
    residual_hidden = _shape(sd, "_encoder._residual_stack._layers.0._block.1.weight")[0] if encoder else hidden
    batch_norm = "_encoder.norm1.weight" in sd
    fields = dict(
        modality="audio",
        arch="code",
        num_codes=num_codes,
        code_dim=code_dim,
        hidden=hidden,
        residual_hidden=residual_hidden,
        num_residual_layers=len(encoder),
        batch_norm=batch_norm,
        # The authors' defaults (their configs; not stored in the state_dict).
        commitment_cost=0.25,
        decay=0.99,
        epsilon=1e-5,
        restart_dead_codes=False,
        input_transform="none",
        batch_stats_mode="running",
        unbiased_running_var=batch_norm,
    )
    fields.update(overrides)
    if fields["batch_stats_mode"] not in BATCH_STATS_MODES:
        raise ValueError(f"batch_stats_mode={fields['batch_stats_mode']!r}: expected one of {BATCH_STATS_MODES}")
    return fields


def variable_path(key: str, shape: tuple[int, ...]) -> tuple[tuple[str, ...], Any] | None:
    """(avrep variable path, collection first; layout function or None) of torch tensor ``key`` of ``shape``;
    None for a dropped tensor (``num_batches_tracked``). ValueError for a tensor the authors' class lacks."""
    module, _, leaf = key.rpartition(".")
    if key in _CODEBOOK:
        return ("vq_ema", "vq", _CODEBOOK[key]), None
    if m := _RESIDUAL.match(key):
        side, layer, block = m.group(1), int(m.group(2)), m.group(3)
        name = f"Conv_{2 * layer + (0 if block == '1' else 1)}"
        return ("params", side, "ResidualStack_0", name, "kernel"), conv_kernel
    if module in _CONVS and leaf in ("weight", "bias"):
        side, name, transposed = _CONVS[module]
        if leaf == "bias":
            return ("params", side, name, "bias"), None
        return ("params", side, name, "kernel"), conv_transpose_kernel if transposed else conv_kernel
    if module in _NORMS and leaf == "num_batches_tracked":
        if len(shape) != 0:
            raise ValueError(f"{key}: expected a scalar counter, got shape {shape}")
        return None
    if module in _NORMS and leaf in _NORM_LEAVES:
        side, name = _NORMS[module]
        collection, flax_leaf = _NORM_LEAVES[leaf]
        return (collection, side, name, flax_leaf), None
    raise ValueError(f"{key}: not a tensor of the authors' speech VQ-VAE (no avrep counterpart)")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Conv1d (out, in, k) -> (k, in, out)."""
    if w.ndim != 3:
        raise ValueError(f"a {w.ndim}-D weight {w.shape}; expected a Conv1d weight (out, in, k)")
    return np.transpose(w, (2, 1, 0))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
    """ConvTranspose1d (in, out, k) -> (k, in, out), flipped along k."""
    if w.ndim != 3:
        raise ValueError(f"a {w.ndim}-D weight {w.shape}; expected a ConvTranspose1d weight (in, out, k)")
    return np.ascontiguousarray(np.transpose(w, (2, 0, 1))[::-1])


def speech_vqvae_variables(state_dict: Mapping[str, Any], model) -> dict[str, dict]:
    """avrep variables (``params``, ``vq_ema``, and ``batch_stats`` with BatchNorm) of ``model`` from a
    released state_dict, every tensor checked by name and shape."""
    variables: dict = {}
    origin: dict[tuple[str, ...], str] = {}
    torch_shapes: dict[tuple[str, ...], tuple[int, ...]] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        target = variable_path(key, value.shape)
        if target is None:
            continue
        path, layout = target
        if path in origin:
            raise ValueError(f"{key} and {origin[path]} both map to {'/'.join(path)}")
        try:
            converted = layout(value) if layout is not None else value
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        origin[path], torch_shapes[path] = key, value.shape
        node = variables
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = converted
    x = jnp.zeros((2, 513), jnp.float32)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    check_against(
        variables, origin, dict(expected), owner=f"{type(model).__name__} checkpoint", torch_shapes=torch_shapes
    )
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)


def load_speech_vqvae(weights: str | os.PathLike, **overrides):
    """(model, variables) from a released weight file (a torch checkpoint, or its state_dict as ``.npz``)."""
    sd = load_state_dict(weights)
    model = build_vqvae(infer_speech_vqvae_config(sd, **overrides))
    return model, speech_vqvae_variables(sd, model)


__all__ = [
    "infer_speech_vqvae_config",
    "is_speech_vqvae",
    "load_speech_vqvae",
    "speech_vqvae_variables",
    "variable_path",
]
