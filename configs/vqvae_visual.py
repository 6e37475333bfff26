# Visual VQ-VAE tokenizer: face images, MSE loss, EMA codebook.
#   python train.py --config configs/vqvae_visual.py --workdir runs/vqvae_visual
#   python train.py --config configs/vqvae_visual.py:vqmae --workdir runs/vqvae_visual_vqmae
#   python evaluate.py --workdir runs/vqvae_visual
# Default (MDVAE setting, spec mdvae.md §2.2): 64x64x3 -> 8x8x32 latent, 512 codes.
# Produces an analysis-resynthesis table (MSE, PSNR, SCC, SSIM) in <workdir>/eval/.
# Variants: "vqmae" (96x96x3 -> 24x24x4, 512 codes: spec vqmae.md §1.3), "smoke" (CPU seconds).
import ml_collections

from configs.common import base_config, frame_training, parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"vqmae", "smoke"})
    setting = "vqmae" if "vqmae" in variants else "mdvae"
    smoke = "smoke" in variants
    c = base_config(setting, smoke)
    c.name = "vqvae_visual"
    c.task = "vqvae"
    if setting == "vqmae":
        model = dict(num_downsamples=2, num_codes=512, code_dim=4, hidden=128, residual_hidden=64)
    else:
        model = dict(num_downsamples=3, num_codes=512, code_dim=32, hidden=128, residual_hidden=32)
    c.model = ml_collections.ConfigDict(dict(modality="visual", arch="code", commitment_cost=0.25, decay=0.99,
                                             restart_dead_codes=True, recon_loss="mse", **model))
    # 8 utterances x 8 random frames = 64 images: on CPU, more small steps beat fewer large ones.
    frame_training(c, examples_per_batch=8, frames_per_example=8, learning_rate=2e-3, num_steps=900,
                   smoke=smoke, smoke_frames=2)
    return c
