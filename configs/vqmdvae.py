# VQ-MDVAE stage 2: the multimodal dynamical VAE on the frozen tokenizers' pre-quantisation features.
#   python train.py --config configs/vqmdvae.py --workdir runs/vqmdvae \
#       --config.tokenizers.audio=runs/vqvae_audio --config.tokenizers.visual=runs/vqvae_visual
# Needs the two tokenizers of the MDVAE setting (configs/vqvae_audio.py, configs/vqvae_visual.py).
# Paper sizes ([MDVAE] Sec. 3.2): w 84, z_av 16, z_a 8, z_v 8, T = 30 frames, features 512 + 2048.
# Variants: "raw" (the paper's "MDVAE" row: the same model on log power spectra and pixels, no
# tokenizers), "smoke" (CPU seconds), "paper" (the authors' recipe, [code-mdvae] config, the only one given: Adam,
# lr 2e-5, batch 1024 windows, 1000 epochs of one window per training utterance, the learning rate x 0.9 every 50
# epochs (StepLR, which their trainer applies whatever its flag says), no warm-up; steps printed at run time).
# Expected run time of "paper" on one H100 (an estimate, not a measurement): XLA counts 1.25 TFLOP per step of
# 1024 windows; MEAD's training split (about 24 k utterances, 24 steps per epoch, 24 k steps) at an assumed 5 % MFU
# of 989 bf16 TFLOP/s (--config.model.dtype=bfloat16; the GRUs run in sequence over T = 30) takes about 10 min,
# plus the one-off feature cache.
import ml_collections

from configs.common import epoch_schedule, parse_variants, stage2_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"smoke", "raw", "paper"})
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
    c = stage2_config("mdvae" if raw else "vqmdvae", "mdvae", model, smoke="smoke" in variants, raw=raw)
    if "paper" in variants and "smoke" not in variants:  # smoke keeps its seconds-long schedule
        c.data.examples_per_batch = 1024
        c.optimizer.update(
            name="adam", learning_rate=2e-5, schedule="step", decay_rate=0.9, decay_every=0, decay_every_epochs=50.0
        )
        epoch_schedule(c, num_epochs=1000, checkpoint_every_epochs=100)
    return c
