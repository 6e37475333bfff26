# Audio VQ-VAE tokenizer: power-spectrogram frames, Itakura-Saito loss, EMA codebook.
#   python train.py --config configs/vqvae_audio.py --workdir runs/vqvae_audio
#   python train.py --config configs/vqvae_audio.py:vqmae --workdir runs/vqvae_audio_vqmae
#   python evaluate.py --workdir runs/vqvae_audio
# Default (MDVAE setting, spec mdvae.md §2.3): 513 bins -> 64x8 latent, 128 codes, hop 533.
# Produces an analysis-resynthesis table (STOI, PESQ wb, SI-SDR) in <workdir>/eval/.
# Variants: "vqmae" (hop 320, 256 codes, BatchNorm: spec vqmae.md §1.2), "smoke" (CPU seconds).
import ml_collections

from configs.common import base_config, frame_training, parse_variants


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
        restart_dead_codes=True, recon_loss="itakura_saito"))
    # 8 utterances x 32 random frames = 256 frames: on CPU, more small steps beat fewer large ones
    # (the authors used 1024; benchmarks/run.py measures that batch).
    frame_training(c, examples_per_batch=8, frames_per_example=32, learning_rate=1e-3, num_steps=2000,
                   smoke=smoke, smoke_frames=4)
    return c
