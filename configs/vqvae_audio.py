# Audio VQ-VAE tokenizer: power-spectrogram frames, Itakura-Saito loss, EMA codebook.
#   python train.py --config configs/vqvae_audio.py --workdir runs/vqvae_audio
#   python train.py --config configs/vqvae_audio.py:vqmae --workdir runs/vqvae_audio_vqmae
#   python evaluate.py --workdir runs/vqvae_audio
# Default (MDVAE setting, spec mdvae.md §2.3): 513 bins -> 64x8 latent, 128 codes, hop 533.
# Produces an analysis-resynthesis table (STOI, PESQ wb, SI-SDR) in <workdir>/eval/.
# Variants: "vqmae" (hop 320, 256 codes, BatchNorm: spec vqmae.md §1.2), "smoke" (CPU seconds).
import ml_collections

from configs.common import base_config, parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"vqmae", "smoke"})
    setting = "vqmae" if "vqmae" in variants else "mdvae"
    smoke = "smoke" in variants
    c = base_config(setting, smoke)
    c.name = "vqvae_audio"
    c.task = "vqvae"
    c.model = ml_collections.ConfigDict(dict(
        modality="audio", arch="code", num_codes=256 if setting == "vqmae" else 128, code_dim=8,
        residual_hidden=32 if setting == "vqmae" else 16,
        batch_norm=setting == "vqmae", input_transform="log", commitment_cost=0.25, decay=0.99,
        recon_loss="itakura_saito"))
    # 32 utterances x 32 random frames = batch of 1024 frames (the authors' batch size).
    c.data.examples_per_batch = 32
    c.data.frames_per_example = 32
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="cosine",
                                                 warmup_steps=50, final_fraction=0.05))
    c.train.num_steps = 1500
    c.train.checkpoint_every = 500
    if smoke:
        c.data.examples_per_batch, c.data.frames_per_example = 8, 4
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=12, log_every=4, checkpoint_every=6)
    return c
