# VQ-JointMVAE baseline (Suzuki et al. 2016; [MDVAE] Sec. 3.5; [Sadok-thesis] Eq. 2.33): one joint latent per frame, no
# temporal model, JMVAE-kl loss with unimodal encoders (alpha = loss.alpha), on the tokenizers' features.
#   python train.py --config configs/vqjointmvae.py --workdir runs/vqjointmvae \
#       --config.tokenizers.audio=runs/vqvae_audio --config.tokenizers.visual=runs/vqvae_visual
# Variants: "smoke".
import ml_collections

from configs.common import parse_variants, stage2_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"smoke"})
    c = stage2_config(
        "vqjointmvae",
        "jointmvae",
        dict(dim_audio=512, dim_visual=2048, dim_z=116),
        smoke="smoke" in variants,
        raw=False,
    )
    c.loss.alpha = 1.0
    return c
