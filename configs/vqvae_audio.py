# Audio VQ-VAE tokenizer: power-spectrogram frames, Itakura-Saito loss, EMA codebook.
#   python train.py --config configs/vqvae_audio.py --workdir runs/vqvae_audio
#   python train.py --config configs/vqvae_audio.py:vqmae --workdir runs/vqvae_audio_vqmae
#   python evaluate.py --workdir runs/vqvae_audio
# Default (MDVAE setting, [MDVAE] Sec. 3.2, Table A.6): 513 bins -> 64x8 latent, 128 codes, hop 533.
# Produces an analysis-resynthesis table (STOI, PESQ wb, SI-SDR) in <workdir>/eval/.
# Variants: "vqmae" (hop 320, 256 codes, BatchNorm: [Sadok-thesis] Sec. 5.3.1, [code-vqmae-av]), "vqmae_s" (the
# released VQ-MAE-S speech VQ-VAE's network, avrep.models.vqvae.SETTINGS["vqmae_s_audio"]: 2 residual layers, linear
# power in; at VQ-MAE-S's hop 256, [Sadok-thesis] App. C.3; the tokenizer of configs/vqmae.py:audio,paper),
# "smoke" (CPU seconds), "paper" (with any setting: the authors' recipe, [code-vqmae-s] config: Adam 1e-3, constant,
# batches of 1024 frames (256 utterances x 4), 20 epochs of frames, converted to steps at run time and printed).
# Expected run time of "paper" on one H100 (an estimate, not a measurement): XLA counts 2.9 GFLOP per 1024-frame
# step ("vqmae"; 2.3 in the MDVAE setting); at an assumed 1 % MFU of 989 bf16 TFLOP/s (--config.model.dtype=
# bfloat16; so small a convolutional network is bound by per-step overhead, taken as at least 1 ms): "vqmae" on
# 1000 h of VoxCeleb2 (180 M frames per epoch, 3.5 M steps) about 1 h; the MDVAE setting on MEAD's 25 h training
# split (2.7 M frames per epoch, 53 k steps) about 1 min.
import ml_collections

from avrep.models.vqvae import SETTINGS as VQVAE_SETTINGS
from configs.common import DTYPE, VQMAE_S_HOP, base_config, frame_training, paper_tokenizer_training, parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"vqmae", "vqmae_s", "smoke", "paper"})
    setting = "vqmae" if variants & {"vqmae", "vqmae_s"} else "mdvae"
    smoke = "smoke" in variants
    c = base_config(setting, smoke)
    c.name = "vqvae_audio"
    c.task = "vqvae"
    c.model = ml_collections.ConfigDict(
        dict(
            modality="audio",
            arch="code",
            dtype=DTYPE,
            num_codes=256 if setting == "vqmae" else 128,
            code_dim=8,
            residual_hidden=32 if setting == "vqmae" else 16,
            batch_norm=setting == "vqmae",
            input_transform="log",
            commitment_cost=0.25,
            decay=0.99,
            restart_dead_codes=True,
        )
    )
    if "vqmae_s" in variants:
        c.model.update({k: v for k, v in VQVAE_SETTINGS["vqmae_s_audio"].items() if k != "modality"})
        c.audio.hop = VQMAE_S_HOP
    c.loss = ml_collections.ConfigDict(dict(recon_loss="itakura_saito"))
    # 64 frames, 4 from each of 16 utterances: training is step-bound on a 2-core CPU. In 2.2 min,
    # 8000 steps of 64 frames gave test STOI 0.904 / PESQ 3.34, against 0.864 / 2.40 for
    # 2000 steps of 256 frames in 7 min (the authors used 1024; benchmarks/run.py measures that batch).
    frame_training(
        c, examples_per_batch=16, frames_per_example=4, learning_rate=1e-3, num_steps=8000, smoke=smoke, smoke_frames=4
    )
    if "paper" in variants and "smoke" not in variants:  # smoke keeps its seconds-long schedule
        paper_tokenizer_training(c, examples_per_batch=256, frames_per_example=4)
    return c
