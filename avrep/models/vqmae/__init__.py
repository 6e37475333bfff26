"""VQ-MAE-AV and VQ-MAE-S: masked autoencoders on VQ-VAE index grids, and their SER heads.

Sources (keys: docs/REFERENCES.md): [Sadok-thesis] Sec. 5.2.2 (token grid), 5.2.3–5.2.4
(masking, embedding), 5.2.5 (blocks, SAF / CAF fusion, global tokens, decoder), 5.2.6
(losses), 5.2.7 (fine-tuning heads, asymmetric loss), App. C.3 and [VQ-MAE-S] (VQ-MAE-S);
where [Sadok-thesis] and the authors' code differ, the modules say so. "[code-vqmae-av]"
("[code-vqmae-s]" for VQ-MAE-S) marks choices taken from the authors' PyTorch code where
the thesis is silent.

Modules: :mod:`.tokens` (index grids <-> tokens, embeddings), :mod:`.masking` (static-shape
masking, packed and paired buffers), :mod:`.av` (:class:`VQMAEAV`), :mod:`.unimodal`
(:class:`VQMAES`, :class:`VQMAEV`), :mod:`.heads` (fine-tuning heads, :func:`vqmae_loss`). The
transformer blocks live in :mod:`avrep.nn.attention`, the generic losses in :mod:`avrep.nn.losses`.
"""

from avrep.models.vqmae.av import CAF_FORMS, FUSIONS, MASKINGS, VQMAEAV, Fusion
from avrep.models.vqmae.heads import POOLINGS, Query2Emo, VQMAEClassifier, count_params, masked_accuracy, vqmae_loss
from avrep.models.vqmae.masking import (
    MASK_RNG,
    MASK_UNITS,
    Masking,
    masking_from_order,
    num_visible_units,
    packed_saf_slots,
    paired_slots,
    sample_masking,
)
from avrep.models.vqmae.tokens import (
    MODALITIES,
    POSITION_INITS,
    TokenEmbedding,
    check_indices,
    tokenize_audio,
    tokenize_visual,
    untokenize_audio,
    untokenize_visual,
)
from avrep.models.vqmae.unimodal import LOSS_MASKS, VQMAES, VQMAEV

__all__ = [
    "CAF_FORMS",
    "FUSIONS",
    "LOSS_MASKS",
    "MASKINGS",
    "MASK_RNG",
    "MASK_UNITS",
    "MODALITIES",
    "POOLINGS",
    "POSITION_INITS",
    "Fusion",
    "Masking",
    "Query2Emo",
    "TokenEmbedding",
    "VQMAEAV",
    "VQMAEClassifier",
    "VQMAES",
    "VQMAEV",
    "check_indices",
    "count_params",
    "masked_accuracy",
    "masking_from_order",
    "num_visible_units",
    "packed_saf_slots",
    "paired_slots",
    "sample_masking",
    "tokenize_audio",
    "tokenize_visual",
    "untokenize_audio",
    "untokenize_visual",
    "vqmae_loss",
]
