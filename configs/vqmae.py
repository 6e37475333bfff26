# VQ-MAE pre-training on the frozen VQ-MAE-setting tokenizers' index grids ([Sadok-thesis] Ch. 5).
#   python train.py --config configs/vqmae.py --workdir runs/vqmae_av \
#       --config.tokenizers.audio=runs/vqvae_audio_vqmae --config.tokenizers.visual=runs/vqvae_visual_vqmae
# Needs the tokenizers of the VQ-MAE setting (configs/vqvae_audio.py:vqmae, configs/vqvae_visual.py:vqmae);
# `python train.py --workdir W --pipeline vqmae` trains everything (README).
# Default: VQ-MAE-AV, SAF-SAF, Dirichlet masking, InfoNCE between the global tokens, CPU-sized
# (configs/common.vqmae_model). Variants (comma-separated):
#   "audio"  VQ-MAE-A / VQ-MAE-S (audio only, [CLS], frame masking 80 %; only the audio tokenizer is read and
#            data.frames_per_example counts audio frames). "audio,paper" is the thesis's VQ-MAE-S: hop 256,
#            200-frame clips, width 320, 4 heads, 12 / 4 blocks, MLP ratio 4 ([Sadok-thesis] App. C.3), on a
#            tokenizer of hop 256 (configs/vqvae_audio.py:vqmae_s, or the released one imported with
#            `python -m avrep.convert vqvae --preset vqmae_s`)
#   "patch"  with "audio": Patch-tf masking (random time-frequency tokens) instead of frames ([Sadok-thesis] Table C.3)
#   "visual" VQ-MAE-V (video only, [CLS], patch masking 80 %): the unimodal baselines of [Sadok-thesis] Fig. C.1
#   "caf"    cross-attention fusion in the encoder and decoder (the thesis's final model)
#   "nocontrastive"  no global tokens / InfoNCE ([Sadok-thesis] Tables 5.4, C.1)
#   "fixed80"        fixed 80 % masking of both modalities instead of Dirichlet ([Sadok-thesis] Table C.2)
#   "paper"  the thesis's sizes (width 320, 12 / 4 blocks, no q/k/v biases, 2 s clips, batch 128: accelerators)
#   "smoke"  CPU seconds (tests)
#   "voxceleb2"  pre-train on VoxCeleb2 built with data_pipelines (README, "Training on real corpora")
import ml_collections

from configs.common import epoch_schedule, parse_variants, use_audio_clock, vqmae_config, vqmae_model

NAMES = {"av": "vqmae_av", "audio": "vqmae_a", "visual": "vqmae_v"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(
        arg, {"audio", "visual", "caf", "nocontrastive", "fixed80", "patch", "paper", "smoke", "voxceleb2"}
    )
    kind = "audio" if "audio" in variants else "visual" if "visual" in variants else "av"
    if "patch" in variants and kind != "audio":
        raise ValueError("config variant 'patch' (VQ-MAE-S's Patch-tf masking) needs the variant 'audio'")
    smoke, paper = "smoke" in variants, "paper" in variants
    c = vqmae_config(NAMES[kind], "vqmae", smoke=smoke, paper=paper)
    c.model = ml_collections.ConfigDict(
        vqmae_model(kind, paper=paper, smoke=smoke, fusion="caf" if "caf" in variants else "saf")
    )
    if kind == "audio":
        use_audio_clock(c, paper=paper, smoke=smoke)
        if "patch" in variants:
            c.model.mask_unit = "patch"
    if kind == "av":
        if "nocontrastive" in variants:
            c.model.global_tokens = False
        if "fixed80" in variants:
            c.model.masking, c.model.mask_ratio, c.model.paired_ratios = "fixed", 0.8, False
    if "voxceleb2" in variants:
        c.data.name = "voxceleb2/vqmae"
    # audio_weight / visual_weight scale the two cross-entropies (1 and 1 in the thesis; an ablation knob).
    c.loss = ml_collections.ConfigDict(
        dict(temperature=0.5, contrastive_weight=1.0, audio_weight=1.0, visual_weight=1.0)
    )
    if paper and not smoke:
        # [Sadok-thesis] Sec. 5.3.1 (VQ-MAE-S too, App. C.3): 140 epochs, 100 of them warm-up, then a cosine to 0 by
        # the last epoch. The code's cosine runs over 800 epochs ([code-vqmae-av]), so it hardly decays by epoch 140:
        # --config.optimizer.decay_epochs=800.
        epoch_schedule(c, num_epochs=140, warmup_epochs=100, checkpoint_every_epochs=10)
        c.train.log_every = 50
    elif not smoke:
        # CPU: 800 steps of 16 one-second clips take about 18 min on 2 cores (1.3 s per step; VQ-MAE-V 0.75 s).
        c.train.update(num_steps=800, log_every=50, checkpoint_every=400)
    return c
