# VQ-MDVAE stage 2: the multimodal dynamical VAE on the frozen tokenizers' pre-quantisation features.
#   python train.py --config configs/vqmdvae.py --workdir runs/vqmdvae \
#       --config.tokenizers.audio=runs/vqvae_audio --config.tokenizers.visual=runs/vqvae_visual
# Needs the two tokenizers of the MDVAE setting (configs/vqvae_audio.py, configs/vqvae_visual.py).
# Paper sizes ([MDVAE] Sec. 3.2): w 84, z_av 16, z_a 8, z_v 8, T = 30 frames, features 512 + 2048.
# Variants: "raw" (the paper's "MDVAE" row: the same model on log power spectra and pixels, no
# tokenizers), "smoke" (CPU seconds).
import ml_collections

from configs.common import parse_variants, stage2_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"smoke", "raw"})
    raw = "raw" in variants
    # Every MDVAE field may be set here; the defaults are the paper's VQ-MDVAE (avrep/models/mdvae.py).
    model = dict(
        dim_audio=513 if raw else 512,
        dim_visual=64 * 64 * 3 if raw else 2048,
        dim_w=84,
        dim_zav=16,
        dim_za=8,
        dim_zv=8,
        activations="paper",
        zav_in_modal_posteriors=True,
    )
    return stage2_config("mdvae" if raw else "vqmdvae", "mdvae", model, smoke="smoke" in variants, raw=raw)
