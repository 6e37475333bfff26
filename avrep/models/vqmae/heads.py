"""VQ-MAE fine-tuning heads (:class:`VQMAEClassifier`, :class:`Query2Emo`), pre-training loss and metrics.

**Fine-tuning** ([Sadok-thesis] Sec. 5.2.7). :class:`VQMAEClassifier` wraps a pre-trained model's encoder
(``backbone.encode``: no masking, no decoder) with a head: "mean" (per-modality mean
of the tokens, concatenated, Linear), "attention" (the global tokens, reused when the
backbone has them, else new poolings), "query2emo" (:class:`Query2Emo`: learned
per-class queries attend over all tokens; PyTorch ``nn.Transformer`` layers, post-norm,
8 heads, FFN 2048, [code-vqmae-av]; 1 encoder and 1 decoder layer as the thesis says, the code
has 2 decoder layers), or "cls" (VQ-MAE-S's [CLS] token). Its parameters sit under
``backbone`` with the pre-trained model's names, so a pre-trained ``params`` tree
(minus ``decoder``) drops in. :func:`asymmetric_loss` is the code's ``ASLSingleLabel``
(γ+ = 0, γ- = 4, label smoothing 0.1). No dropout anywhere (timm's and the
pre-training defaults are 0; nn.Transformer's 0.1 in Query2Emo is left out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from avrep.models.config import check_choice
from avrep.models.vqmae.av import VQMAEAV
from avrep.models.vqmae.tokens import MODALITIES
from avrep.models.vqmae.unimodal import _UnimodalMAE
from avrep.nn.attention import AttentionPooling, PostNormLayer, dense_init, layer_norm
from avrep.nn.losses import info_nce, masked_cross_entropy

POOLINGS = ("mean", "attention", "query2emo", "cls")


def masked_accuracy(outputs) -> jax.Array:
    """Fraction of the masked indices whose most likely code is the true one."""
    hits = jnp.argmax(outputs["logits"], -1) == outputs["targets"]
    mask = jnp.broadcast_to(outputs["target_mask"][..., None], hits.shape)
    return jnp.sum(hits & mask) / jnp.maximum(jnp.sum(mask), 1)


def vqmae_loss(
    outputs: Mapping[str, Any],
    *,
    temperature: float = 0.5,
    contrastive_weight: float = 1.0,
    modality_weights: Mapping[str, float] | None = None,
):
    """L = Σ_modality CE(masked indices) + contrastive_weight · InfoNCE(w_a, w_v) ([Sadok-thesis] Eq. 5.5).

    ``outputs``: a VQMAEAV or VQMAES forward pass. Returns (loss, {"ce_audio",
    ["ce_visual", "nce"]}); the InfoNCE term is there when the outputs have global
    tokens and ``contrastive_weight`` is not 0. ``modality_weights`` ({"audio": w_a,
    "visual": w_v}, default 1 each as the thesis) weight the cross-entropies (an ablation
    knob; the reported terms stay unweighted).
    """
    weights = {**{m: 1.0 for m in MODALITIES}, **(modality_weights or {})}
    terms = {}
    for name in MODALITIES:
        if name in outputs:
            o = outputs[name]
            terms[f"ce_{name}"] = masked_cross_entropy(o["logits"], o["targets"], o["target_mask"])
    loss = sum(weights[name[3:]] * ce for name, ce in terms.items())
    if "global" in outputs and contrastive_weight:
        terms["nce"] = info_nce(outputs["global"]["audio"], outputs["global"]["visual"], temperature)
        loss = loss + contrastive_weight * terms["nce"]
    return loss, terms


class Query2Emo(nn.Module):
    """Query2Emo head (after Query2Label): learned per-class queries attend over all tokens.

    tokens [B, N, D] (both modalities' encoder outputs, concatenated) -> transformer
    encoder layers -> a decoder whose queries are C learned label embeddings
    (U[0, 1) init, [code-vqmae-av]) -> the C outputs concatenated -> Linear(C·D -> C).
    """

    num_classes: int
    num_heads: int = 8
    encoder_layers: int = 1
    decoder_layers: int = 1  # thesis; the code uses 2
    mlp_dim: int = 2048  # nn.Transformer's default feed-forward size [code-vqmae-av]

    @nn.compact
    def __call__(self, tokens, valid=None):
        b, _, d = tokens.shape
        memory = tokens
        for i in range(self.encoder_layers):
            memory = PostNormLayer(self.num_heads, self.mlp_dim, name=f"encoder_{i}")(memory)
        memory = layer_norm("encoder_norm")(memory)
        labels = self.param("label_embedding", nn.initializers.uniform(1.0), (self.num_classes, d))
        q = jnp.broadcast_to(labels, (b, self.num_classes, d))
        for i in range(self.decoder_layers):
            q = PostNormLayer(self.num_heads, self.mlp_dim, name=f"decoder_{i}")(q, memory, valid)
        q = layer_norm("decoder_norm")(q)
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="classifier")(q.reshape(b, self.num_classes * d))


class VQMAEClassifier(nn.Module):
    """A pre-trained VQMAEAV / VQMAES encoder with an SER head ([Sadok-thesis] Sec. 5.2.7; see module doc).

    ``backbone``: the pre-training model (its fields; its decoder is never used, so
    its parameters are not created). ``pooling``: "mean", "attention", "query2emo" or
    "cls" (unimodal backbones). ``__call__(audio, visual)`` (VQMAEAV) or ``__call__(indices)``
    (VQMAES: audio, VQMAEV: visual) -> logits [B, num_classes].
    """

    backbone: nn.Module  # VQMAEAV, VQMAES or VQMAEV
    num_classes: int
    pooling: str = "query2emo"
    query2emo_heads: int = 8
    query2emo_encoder_layers: int = 1
    query2emo_decoder_layers: int = 1
    query2emo_mlp_dim: int = 2048

    def __post_init__(self):
        check_choice(self, "pooling", POOLINGS)
        if not isinstance(self.backbone, (VQMAEAV, _UnimodalMAE)):
            raise TypeError(
                f"VQMAEClassifier.backbone: expected a VQMAEAV, VQMAES or VQMAEV, got {type(self.backbone).__name__}"
            )
        if self.pooling == "cls" and not isinstance(self.backbone, _UnimodalMAE):
            raise ValueError(
                "VQMAEClassifier.pooling='cls' needs a VQMAES or VQMAEV backbone (VQMAEAV has "
                "no [CLS] token; use 'attention')"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, *indices):
        bb = self.backbone
        expected = 2 if isinstance(bb, VQMAEAV) else 1
        if len(indices) != expected:
            raise ValueError(
                f"VQMAEClassifier: a {type(bb).__name__} backbone reads {expected} index grid(s) "
                f"({'audio, visual' if expected == 2 else bb._grid().name}), got {len(indices)}"
            )
        if isinstance(bb, VQMAEAV):
            feats = bb.encode(*indices, pool=self.pooling == "attention")
        else:
            feats = bb.encode(*indices)
        streams = [feats["tokens"][m] for m in MODALITIES if m in feats["tokens"]]
        if self.pooling == "query2emo":
            return Query2Emo(
                self.num_classes,
                self.query2emo_heads,
                self.query2emo_encoder_layers,
                self.query2emo_decoder_layers,
                self.query2emo_mlp_dim,
                name="query2emo",
            )(jnp.concatenate(streams, axis=1))
        if self.pooling == "mean":
            pooled = [s.mean(axis=1) for s in streams]
        elif self.pooling == "cls":
            pooled = [feats["cls"]]
        elif "global" in feats:  # attention, pre-trained global tokens
            pooled = [feats["global"][m] for m in MODALITIES]
        else:  # attention pooling initialised here
            pooled = [
                AttentionPooling(bb.num_heads, bb.mlp_ratio, name=f"{m}_pool")(s) for m, s in zip(MODALITIES, streams)
            ]
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(jnp.concatenate(pooled, axis=-1))


def count_params(tree) -> int:
    """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
