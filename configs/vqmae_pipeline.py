# The VQ-MAE default pipeline: `python train.py --workdir W --pipeline vqmae`, on SynthAV's VQ-MAE setting
# (96x96 faces at 25 fps, audio at 50 Hz):
#   1. W/data                   SynthAV generated if absent: the labelled set (synthav/vqmae, 40 speakers) and
#                               the pre-training corpus (synthav/vqmae_pretrain, 240 other speakers, labels unused:
#                               the role VoxCeleb2 plays for RAVDESS in [Sadok-thesis] Ch. 5)
#   2. W/vqvae_audio            audio tokenizer, 64 indices per frame from 256 codes (configs/vqvae_audio.py:vqmae)
#   3. W/vqvae_visual           visual tokenizer, 24x24 indices from 512 codes (configs/vqvae_visual.py:vqmae)
#   4. W/vqmae_av               VQ-MAE-AV pre-training on their index grids (configs/vqmae.py)
#   5. W/vqmae_av_ft0 .. ft4    emotion fine-tuning, one run per fold of a 5-fold speaker-independent
#                               cross-validation (configs/vqmae_finetune.py)
# Stages 2-4 see only the pre-training corpus, so no fine-tuning test speaker was seen in pre-training. Then
# `python evaluate.py --workdir W` writes the tables into W/eval/. The index grids are cached once per split:
# the pre-training corpus's in W/index_cache_pretrain/, the labelled set's in W/index_cache/ (stage 5).
# `python -m avrep.evaluation.vqmae --probe W/vqmae_av` measures the linear-probe curve (docs/RESULTS.md).
# `--variant smoke` runs every stage's smoke config (tests).
import os

from configs import vqmae, vqmae_finetune, vqvae_audio, vqvae_visual

# CPU-sized tokenizer schedules for this pipeline (the stand-alone configs train longer).
TOKENIZER_STEPS = {"vqvae_audio": 4000, "vqvae_visual": 1500}
# Labelled set -> the pre-training corpus of other speakers (data_pipelines/synthav/builder.PRETRAINING_CORPORA).
PRETRAINING_CORPUS = {"synthav/vqmae": "synthav/vqmae_pretrain", "synthav/vqmae_smoke": "synthav/vqmae_pretrain_smoke"}


def get_stages(workdir: str, variant: str = ""):
    """[(stage name, stage workdir, config)] in the order they must run."""
    workdir = os.path.abspath(workdir)
    smoke = "smoke" in variant.split(",")
    tokenizer_variant = ",".join(v for v in ("vqmae", variant) if v)
    tokenizers = {"audio": os.path.join(workdir, "vqvae_audio"), "visual": os.path.join(workdir, "vqvae_visual")}
    stages = []
    for name, module in (("vqvae_audio", vqvae_audio), ("vqvae_visual", vqvae_visual)):
        config = module.get_config(tokenizer_variant)
        if not smoke:
            config.train.num_steps = TOKENIZER_STEPS[name]
            config.train.checkpoint_every = TOKENIZER_STEPS[name] // 2
        stages.append((name, tokenizers[name.split("_")[1]], config))
    pretrain = vqmae.get_config(variant)
    pretrain.tokenizers.update(tokenizers)
    stages.append(("vqmae_av", os.path.join(workdir, "vqmae_av"), pretrain))
    finetune = vqmae_finetune.get_config(variant)
    for fold in range(finetune.finetune.num_folds):
        config = vqmae_finetune.get_config(variant)
        config.finetune.pretrained = os.path.join(workdir, "vqmae_av")
        config.name = "vqmae_av_ft"
        config.finetune.fold = fold
        stages.append((f"vqmae_av_ft{fold}", os.path.join(workdir, f"vqmae_av_ft{fold}"), config))
    for name, _, config in stages:
        config.data.data_dir = os.path.join(workdir, "data")
        labelled = name.startswith("vqmae_av_ft")
        if not labelled:
            config.data.name = PRETRAINING_CORPUS.get(config.data.name, config.data.name)
        if "feature_cache_dir" in config.data:
            config.data.feature_cache_dir = os.path.join(workdir, "index_cache" if labelled else "index_cache_pretrain")
    return stages
