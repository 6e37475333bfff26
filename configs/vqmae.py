# VQ-MAE pre-training on the frozen VQ-MAE-setting tokenizers' index grids ([Sadok-thesis] Ch. 5).
#   python train.py --config configs/vqmae.py --workdir runs/vqmae_av \
#       --config.tokenizers.audio=runs/vqvae_audio_vqmae --config.tokenizers.visual=runs/vqvae_visual_vqmae
# Needs the tokenizers of the VQ-MAE setting (configs/vqvae_audio.py:vqmae, configs/vqvae_visual.py:vqmae);
# `python train.py --workdir W --pipeline vqmae` trains everything (README).
# Default: VQ-MAE-AV, SAF-SAF, Dirichlet masking, InfoNCE between the global tokens, CPU-sized
# (configs/common.vqmae_model). Variants (comma-separated):
#   "audio"  VQ-MAE-A / VQ-MAE-S (audio only, [CLS], frame masking 80 %)
#   "visual" VQ-MAE-V (video only, [CLS], patch masking 80 %): the unimodal baselines of [Sadok-thesis] Fig. C.1
#   "caf"    cross-attention fusion in the encoder and decoder (the thesis's final model)
#   "nocontrastive"  no global tokens / InfoNCE ([Sadok-thesis] Tables 5.4, C.1)
#   "fixed80"        fixed 80 % masking of both modalities instead of Dirichlet ([Sadok-thesis] Table C.2)
#   "paper"  the thesis's sizes (width 320, 12 / 4 blocks, 2 s clips, batch 128: accelerators)
#   "smoke"  CPU seconds (tests)
#   "voxceleb2"  pre-train on VoxCeleb2 built with data_pipelines (README, "Training on real corpora")
import ml_collections

from configs.common import parse_variants, vqmae_config, vqmae_model

NAMES = {"av": "vqmae_av", "audio": "vqmae_a", "visual": "vqmae_v"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(
        arg, {"audio", "visual", "caf", "nocontrastive", "fixed80", "paper", "smoke", "voxceleb2"}
    )
    kind = "audio" if "audio" in variants else "visual" if "visual" in variants else "av"
    smoke, paper = "smoke" in variants, "paper" in variants
    c = vqmae_config(NAMES[kind], "vqmae", smoke=smoke, paper=paper)
    c.model = ml_collections.ConfigDict(
        vqmae_model(kind, paper=paper, smoke=smoke, fusion="caf" if "caf" in variants else "saf")
    )
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
    if not smoke:
        # CPU: 800 steps of 16 one-second clips take about 18 min on 2 cores (1.3 s per step; VQ-MAE-V 0.75 s).
        c.train.update(num_steps=140 * 1000 if paper else 800, log_every=50, checkpoint_every=5000 if paper else 400)
    return c
