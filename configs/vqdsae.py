# VQ-DSAE baseline ([MDVAE] Sec. 3.3): one modality, one static w and one dynamical z, on the
# frozen tokenizer's features. Pick the modality with the variant:
#   python train.py --config configs/vqdsae.py:audio --workdir runs/vqdsae_audio \
#       --config.tokenizers.audio=runs/vqvae_audio --config.tokenizers.visual=runs/vqvae_visual
# Variants: "audio" | "visual" (one is required), "raw" (the paper's "DSAE" rows: log power spectra or
# pixels, no tokenizers), "smoke".
import ml_collections

from avrep.models.mdvae import DSAE_PRESETS
from configs.common import parse_variants, stage2_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"audio", "visual", "raw", "smoke"})
    modalities = variants & {"audio", "visual"}
    if len(modalities) != 1:
        raise ValueError(
            f"configs/vqdsae.py needs exactly one of the variants 'audio' or 'visual' "
            f"(e.g. configs/vqdsae.py:audio), got {arg!r}"
        )
    modality, raw = modalities.pop(), "raw" in variants
    model = dict(DSAE_PRESETS[modality])
    if raw:
        model["dim_x"] = 513 if modality == "audio" else 64 * 64 * 3
    name = ("dsae" if raw else "vqdsae") + f"_{modality}"
    return stage2_config(name, "dsae", model, smoke="smoke" in variants, raw=raw)
