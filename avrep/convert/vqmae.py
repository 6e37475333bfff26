"""The authors' token transformers (VQ-MAE-AV's ``CMDMAE``, VQ-MAE-S's ``MAE``) -> avrep's ``VQMAEAV`` /
``VQMAES`` and their parameters.

``infer_vqmae_config(state_dict)`` reads the model from the tensor shapes: VQ-MAE-AV or VQ-MAE-S (``proj_v``
or ``cls_token``), width, codes and code dimensions (``proj*``), tokens (``pos_embedding*`` rows), depths,
MLP ratio (``mlp.fc1``), SAF or CAF (``transformer`` or ``transformer_v``) and query/key/value biases
(``attn.qkv.bias``). What shapes cannot tell comes from the authors' configs, and can be overridden: 4
heads, and the token layout of their ``to_tube`` (64 audio bins in 4-bin bands, 24 x 24 visual grids in
4 x 4 patches; the time depth per token follows from the indices per token). An imported CAF decoder gets
``caf_form="authors"`` (their decoder runs the audio stream through ``cross_attention_v``; their unused
``decoder.cross_attention_a`` is dropped). ``vqmae_variables(state_dict, model)`` maps every tensor by
name and checks it against the model's shapes; a missing, unexpected or misshapen tensor raises a
ValueError naming the torch key. ``load_vqmae(weights)`` does both from a file.

Tensor mapping (torch -> Flax path under ``params``, layout):

* a timm ``Block`` ``P`` -> ``block_i``: ``P.norm{1,2}`` -> ``norm{1,2}`` (weight -> scale);
  ``P.attn.qkv.weight`` (3D, D), rows [q; k; v] with the heads contiguous inside each ->
  ``attn/{query,key,value}/kernel`` (D, H, D/H) (and ``attn.qkv.bias`` -> their biases, when present);
  ``P.attn.proj`` -> ``attn/out`` (kernel (H, D/H, D)); ``P.mlp.fc{1,2}`` -> ``mlp/fc{1,2}``;
* a ``CrossAttention`` ``C`` (``nn.MultiheadAttention`` inside) -> a CrossAttentionBlock:
  ``C.cross_attention.in_proj_weight`` / ``in_proj_bias`` (3D, D) / (3D,) -> ``attn/{query,key,value}``,
  ``C.cross_attention.out_proj`` -> ``attn/out``, ``C.layer_norm`` -> ``norm``, ``C.mlp`` -> ``mlp``;
* stacks: ``{encoder,decoder}.transformer.i`` -> ``{encoder,decoder}/fusion/stack/block_i`` (SAF; VQ-MAE-S:
  ``.../stack/block_i`` without ``fusion``), ``transformer_v`` / ``transformer_a`` -> ``visual_stack`` /
  ``audio_stack`` (CAF), ``encoder.layer_norm[_v|_a]`` -> the encoder stack's final ``norm``,
  ``cross_attention_v`` / ``_a`` -> ``visual_cross`` / ``audio_cross``;
* embeddings: ``proj[_v|_a].weight`` (codes, e) -> ``*embedding/embedding`` unchanged;
  ``pos_embedding[_v|_a]`` (T, 1, D) -> ``*pos`` (T, D) (VQ-MAE-S's decoder table has the [CLS] row 0, as
  avrep's); ``modality_emb_*``, ``mask_token``, ``cls_token`` (1, 1, D) -> (D,);
* heads: ``head[_v|_a]`` Linear(e, codes), applied to each e-sized chunk of a token -> ``*head`` (kernel
  (e, codes)).

Both sides use LayerNorm eps 1e-5 and the exact (erf) GELU (``avrep.nn.attention``), so nothing else is
set on import. The authors tube the index grids outside their model; avrep's ``tokenize_audio`` /
``tokenize_visual`` give the same token layout (tested on their stored inputs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from avrep.convert.state_dict import check_against, load_state_dict, place
from avrep.models.config import module_from_config
from avrep.models.vqmae import VQMAEAV, VQMAES

MODELS = {"av": VQMAEAV, "audio": VQMAES}
# What the state_dict cannot tell: the authors' configs (config_cmdmae, config_mae) and their to_tube.
DEFAULTS = dict(num_heads=4, audio_bins=64, audio_patch_freq=4, visual_height=24, visual_width=24, visual_patch_size=4)

_BLOCK = {  # timm Block tensor (after "<stack>.<i>.") -> (Flax path under block_i, layout)
    "norm1.weight": (("norm1", "scale"), None),
    "norm1.bias": (("norm1", "bias"), None),
    "norm2.weight": (("norm2", "scale"), None),
    "norm2.bias": (("norm2", "bias"), None),
    "attn.qkv.weight": (("attn",), "qkv_weight"),
    "attn.qkv.bias": (("attn",), "qkv_bias"),
    "attn.proj.weight": (("attn", "out", "kernel"), "out_kernel"),
    "attn.proj.bias": (("attn", "out", "bias"), None),
    "mlp.fc1.weight": (("mlp", "fc1", "kernel"), "linear"),
    "mlp.fc1.bias": (("mlp", "fc1", "bias"), None),
    "mlp.fc2.weight": (("mlp", "fc2", "kernel"), "linear"),
    "mlp.fc2.bias": (("mlp", "fc2", "bias"), None),
}
_CROSS = {  # CrossAttention tensor (after "<name>.") -> (Flax path under the CrossAttentionBlock, layout)
    "cross_attention.in_proj_weight": (("attn",), "qkv_weight"),
    "cross_attention.in_proj_bias": (("attn",), "qkv_bias"),
    "cross_attention.out_proj.weight": (("attn", "out", "kernel"), "out_kernel"),
    "cross_attention.out_proj.bias": (("attn", "out", "bias"), None),
    "layer_norm.weight": (("norm", "scale"), None),
    "layer_norm.bias": (("norm", "bias"), None),
    "mlp.fc1.weight": (("mlp", "fc1", "kernel"), "linear"),
    "mlp.fc1.bias": (("mlp", "fc1", "bias"), None),
    "mlp.fc2.weight": (("mlp", "fc2", "kernel"), "linear"),
    "mlp.fc2.bias": (("mlp", "fc2", "bias"), None),
}
_STACK = re.compile(r"^(encoder|decoder)\.transformer(_v|_a)?\.(\d+)\.(.+)$")
_CROSS_KEY = re.compile(r"^(encoder|decoder)\.cross_attention_(v|a)\.(.+)$")
_MODALITY = {"_v": "visual", "_a": "audio", "v": "visual", "a": "audio"}


def vqmae_kind(state_dict: Mapping[str, Any]) -> str | None:
    """``"av"`` (CMDMAE), ``"audio"`` (MAE) or None."""
    if "encoder.proj_v.weight" in state_dict and "encoder.proj_a.weight" in state_dict:
        return "av"
    if "encoder.cls_token" in state_dict and "encoder.proj.weight" in state_dict:
        return "audio"
    return None


def _shape(sd, key) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"state_dict: missing tensor {key}")
    return tuple(np.shape(sd[key]))


def _depth(sd, side: str, stack: str) -> int:
    layers = sorted(
        {int(m.group(3)) for k in sd if (m := _STACK.match(k)) and m.group(1) == side and m.group(2) == stack}
    )
    if layers != list(range(len(layers))):
        raise ValueError(f"state_dict: {side}.transformer{stack or ''} has blocks {layers}; expected 0..n-1")
    return len(layers)


def _fusion(sd, side: str) -> tuple[str, int]:
    """(SAF or CAF, depth) of one side of a CMDMAE state_dict."""
    saf, visual, audio = (_depth(sd, side, s) for s in (None, "_v", "_a"))
    if saf and not (visual or audio):
        return "saf", saf
    if visual and visual == audio and not saf:
        return "caf", visual
    raise ValueError(
        f"state_dict: {side} has {saf} shared, {visual} visual and {audio} audio blocks; expected one shared stack "
        "(SAF) or two stacks of the same depth (CAF)"
    )


def _layout(owner: str, tokens: int, indices: int, spatial_tokens: int, patch_space: int, frames_key: str):
    """(patch_time, frames) of a modality from its token count and indices per token."""
    patch_time, rest = divmod(indices, patch_space)
    if rest or patch_time < 1 or tokens % spatial_tokens:
        raise ValueError(
            f"state_dict: {owner} has {tokens} tokens of {indices} indices, which does not fit {spatial_tokens} "
            f"tokens per time window of {patch_space} indices per frame; pass the layout ({frames_key}, ...) "
            "as overrides"
        )
    return patch_time, tokens // spatial_tokens * patch_time


def infer_vqmae_config(state_dict: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """``{"kind": "av" | "audio", **fields}`` of ``VQMAEAV`` / ``VQMAES`` for an authors' state_dict;
    ``overrides``: fields to set regardless (e.g. ``num_heads``, ``loss_mask="authors"``)."""
    sd = state_dict
    kind = vqmae_kind(sd)
    if kind is None:
        modules = sorted({".".join(k.split(".")[:2]) for k in sd})
        raise ValueError(
            "state_dict: not an authors' VQ-MAE (expected encoder.proj_v / proj_a (CMDMAE) or encoder.cls_token "
            f"and encoder.proj (MAE)); its modules are {modules}"
        )
    layout = {**DEFAULTS, **{k: v for k, v in overrides.items() if k in DEFAULTS}}
    suffix = "_a" if kind == "av" else ""
    width = _shape(sd, f"encoder.pos_embedding{suffix}")[-1]
    fc1 = next((k for k in sd if k.endswith("mlp.fc1.weight") and _STACK.match(k)), None)
    if fc1 is None:
        raise ValueError("state_dict: no transformer block (encoder.transformer*.0.mlp.fc1.weight) to read sizes from")
    fields: dict[str, Any] = dict(
        width=width,
        num_heads=layout["num_heads"],
        mlp_ratio=_shape(sd, fc1)[0] / width,
        position_init="normal",
        attention_bias=any(k.endswith("attn.qkv.bias") for k in sd),
    )
    audio_codes, audio_dim = _shape(sd, f"encoder.proj{suffix}.weight")
    audio_time, audio_frames = _layout(
        "audio",
        _shape(sd, f"encoder.pos_embedding{suffix}")[0],
        width // audio_dim,
        layout["audio_bins"] // layout["audio_patch_freq"],
        layout["audio_patch_freq"],
        "audio_frames",
    )
    fields.update(
        audio_frames=audio_frames,
        audio_bins=layout["audio_bins"],
        audio_patch_time=audio_time,
        audio_patch_freq=layout["audio_patch_freq"],
        audio_codes=audio_codes,
        audio_code_dim=audio_dim,
    )
    if kind == "audio":
        fields.update(encoder_depth=_depth(sd, "encoder", None), decoder_depth=_depth(sd, "decoder", None))
        fields.update(mask_unit="patch", mask_ratio=0.5)  # their pre-training: "random" masking at 0.5
    else:
        visual_codes, visual_dim = _shape(sd, "encoder.proj_v.weight")
        p = layout["visual_patch_size"]
        visual_time, visual_frames = _layout(
            "visual",
            _shape(sd, "encoder.pos_embedding_v")[0],
            width // visual_dim,
            (layout["visual_height"] // p) * (layout["visual_width"] // p),
            p * p,
            "visual_frames",
        )
        (encoder_fusion, encoder_depth), (decoder_fusion, decoder_depth) = (
            _fusion(sd, "encoder"),
            _fusion(sd, "decoder"),
        )
        fields.update(
            visual_frames=visual_frames,
            visual_height=layout["visual_height"],
            visual_width=layout["visual_width"],
            visual_patch_time=visual_time,
            visual_patch_size=p,
            visual_codes=visual_codes,
            visual_code_dim=visual_dim,
            encoder_depth=encoder_depth,
            decoder_depth=decoder_depth,
            encoder_fusion=encoder_fusion,
            decoder_fusion=decoder_fusion,
            caf_form="authors" if decoder_fusion == "caf" else "corrected",
            global_tokens=False,  # the pooling heads of their contrastive variant are not mapped (refused below)
            # Their pre-training draws one Dir(1, 1) ratio pair per batch.
            masking="dirichlet",
            ratio_per_example=False,
            paired_ratios=False,
        )
    fields.update(overrides)
    return {"kind": kind, **fields}


def _qkv(value: np.ndarray, num_heads: int, bias: bool) -> dict[str, np.ndarray]:
    """A fused [q; k; v] weight (3D, D) or bias (3D,) -> {query, key, value: kernel (D, H, d) or bias (H, d)}."""
    width = value.shape[0] // 3
    if value.shape[0] != 3 * width or (not bias and value.shape != (3 * width, width)):
        raise ValueError(f"shape {value.shape}; expected a fused q/k/v {'bias (3D,)' if bias else 'weight (3D, D)'}")
    head = width // num_heads
    parts = np.split(value, 3)
    if bias:
        return {n: {"bias": p.reshape(num_heads, head)} for n, p in zip(("query", "key", "value"), parts)}
    return {n: {"kernel": p.T.reshape(width, num_heads, head)} for n, p in zip(("query", "key", "value"), parts)}


def _target(key: str, kind: str, caf_form: str) -> tuple[tuple[str, ...], Any] | None:
    """(Flax path under ``params``, layout) of torch tensor ``key``; None for a tensor the model does not use."""
    if m := _STACK.match(key):
        side, stack, index, rest = m.groups()
        if rest not in _BLOCK:
            raise ValueError(f"{key}: not a tensor of a timm Block")
        name = "stack" if stack is None else f"{_MODALITY[stack]}_stack"
        base = (side, name) if kind == "audio" else (side, "fusion", name)
        path, layout = _BLOCK[rest]
        return (*base, f"block_{index}", *path), layout
    if kind == "av" and (m := _CROSS_KEY.match(key)):
        side, modality, rest = m.groups()
        if side == "decoder" and modality == "a" and caf_form == "authors":
            return None  # their decoder never calls cross_attention_a
        if rest not in _CROSS:
            raise ValueError(f"{key}: not a tensor of the authors' CrossAttention")
        path, layout = _CROSS[rest]
        return (side, "fusion", f"{_MODALITY[modality]}_cross", *path), layout
    flat = _FLAT_AV if kind == "av" else _FLAT_S
    if key in flat:
        return flat[key]
    raise ValueError(f"{key}: no avrep counterpart in {MODELS[kind].__name__}")


_FLAT_S = {
    "encoder.cls_token": (("encoder", "cls"), "vector"),
    "encoder.pos_embedding": (("encoder", "pos"), "table"),
    "encoder.proj.weight": (("encoder", "embedding", "embedding"), None),
    "encoder.layer_norm.weight": (("encoder", "stack", "norm", "scale"), None),
    "encoder.layer_norm.bias": (("encoder", "stack", "norm", "bias"), None),
    "decoder.mask_token": (("decoder", "mask_token"), "vector"),
    "decoder.pos_embedding": (("decoder", "pos"), "table"),
    "decoder.head.weight": (("decoder", "head", "kernel"), "linear"),
    "decoder.head.bias": (("decoder", "head", "bias"), None),
}
_FLAT_AV = {"decoder.mask_token": (("decoder", "mask_token"), "vector")}
for _s, _m in (("_v", "visual"), ("_a", "audio")):
    _FLAT_AV.update(
        {
            f"encoder.proj{_s}.weight": (("encoder", f"{_m}_embedding", "embedding"), None),
            f"decoder.head{_s}.weight": (("decoder", f"{_m}_head", "kernel"), "linear"),
            f"decoder.head{_s}.bias": (("decoder", f"{_m}_head", "bias"), None),
        }
    )
    for _side in ("encoder", "decoder"):
        _FLAT_AV[f"{_side}.pos_embedding{_s}"] = ((_side, f"{_m}_pos"), "table")
        _FLAT_AV[f"{_side}.modality_emb{_s}"] = ((_side, f"{_m}_modality"), "vector")
    for _leaf, _flax in (("weight", "scale"), ("bias", "bias")):  # CAF encoder's final norms
        _FLAT_AV[f"encoder.layer_norm{_s}.{_leaf}"] = (("encoder", "fusion", f"{_m}_stack", "norm", _flax), None)
for _leaf, _flax in (("weight", "scale"), ("bias", "bias")):  # SAF encoder's final norm
    _FLAT_AV[f"encoder.layer_norm.{_leaf}"] = (("encoder", "fusion", "stack", "norm", _flax), None)


def _convert(value: np.ndarray, layout: str | None, num_heads: int):
    """The Flax value (or {name: {leaf: value}} for fused q/k/v) of a torch tensor with ``layout``."""
    if layout is None:
        return value
    if layout in ("qkv_weight", "qkv_bias"):
        return _qkv(value, num_heads, layout == "qkv_bias")
    if layout == "linear":
        if value.ndim != 2:
            raise ValueError(f"shape {value.shape}; expected a Linear weight (out, in)")
        return value.T
    if layout == "out_kernel":
        if value.ndim != 2 or value.shape[0] != value.shape[1]:
            raise ValueError(f"shape {value.shape}; expected a square output projection (D, D)")
        width = value.shape[0]
        return value.T.reshape(num_heads, width // num_heads, width)
    if value.ndim != 3 or value.shape[1] != 1:  # "table" (T, 1, D) and "vector" (1, 1, D)
        raise ValueError(f"shape {value.shape}; expected the authors' (rows, 1, D) layout")
    return value[0, 0] if layout == "vector" else value[:, 0]


def _dummy_inputs(model) -> tuple:
    if isinstance(model, VQMAEAV):
        audio = jnp.zeros((2, model.audio_frames, model.audio_bins), jnp.int32)
        return audio, jnp.zeros((2, model.visual_frames, model.visual_height, model.visual_width), jnp.int32)
    return (jnp.zeros((2, model.audio_frames, model.audio_bins), jnp.int32),)


def vqmae_variables(state_dict: Mapping[str, Any], model) -> dict[str, dict]:
    """``{"params": ...}`` of ``model`` (a ``VQMAEAV`` or ``VQMAES``) from an authors' state_dict, every
    tensor checked by name and shape."""
    kind = "av" if isinstance(model, VQMAEAV) else "audio"
    caf_form = getattr(model, "caf_form", "corrected")
    params: dict = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, value in state_dict.items():
        target = _target(key, kind, caf_form)
        if target is None:
            continue
        path, layout = target
        try:
            converted = _convert(np.asarray(value, np.float32), layout, model.num_heads)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        leaves = (
            {(*path, name, leaf): v for name, d in converted.items() for leaf, v in d.items()}
            if isinstance(converted, dict)
            else {path: converted}
        )
        for p, v in leaves.items():
            place(params, origin, p, key, v)
    rngs = {"params": jax.random.key(0), "mask": jax.random.key(1)}
    expected = jax.eval_shape(lambda: model.init(rngs, *_dummy_inputs(model)))["params"]
    check_against(params, origin, expected, owner=f"{type(model).__name__} checkpoint")
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)}


def build_vqmae(config: Mapping[str, Any]):
    """``VQMAEAV`` / ``VQMAES`` from ``infer_vqmae_config``'s dict."""
    fields = {k: v for k, v in config.items() if k != "kind"}
    return module_from_config(MODELS[config["kind"]], fields, f"{config['kind']} VQ-MAE")


def load_vqmae(weights: str | os.PathLike, **overrides):
    """(model, variables) from an authors' weight file (a torch checkpoint, or its state_dict as ``.npz``)."""
    sd = load_state_dict(weights)
    try:
        model = build_vqmae(infer_vqmae_config(sd, **overrides))
        return model, vqmae_variables(sd, model)
    except ValueError as e:
        raise ValueError(f"{os.fspath(weights)}: {e}") from None


__all__ = ["DEFAULTS", "MODELS", "build_vqmae", "infer_vqmae_config", "load_vqmae", "vqmae_kind", "vqmae_variables"]
