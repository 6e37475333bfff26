# Speech emotion recognition from a pre-trained VQ-MAE encoder, one fold of a speaker-independent k-fold
# cross-validation (avrep/tasks/vqmae.py explains the folds).
#   for i in 0 1 2 3 4; do python train.py --config configs/vqmae_finetune.py --workdir runs/vqmae_av_ft$i \
#       --config.finetune.pretrained=runs/vqmae_av --config.finetune.fold=$i; done
#   python evaluate.py --workdir runs      # accuracy and F1, mean ± std over the folds
# The tokenizers and the model come from the pre-training run (config key finetune.pretrained); with no
# pretrained run (variant "scratch"), the same architecture starts from random weights ([Sadok-thesis] Table 5.2).
# Checkpoints every finetune-evaluation interval are kept: evaluate.py picks the one with the best
# validation accuracy (validation speakers carved from the training speakers, never the test fold).
# Variants: "mean" / "attention" / "query2emo" pooling (default query2emo, [Sadok-thesis] Table 5.5), "frozen"
# (encoder frozen, [Sadok-thesis] Table 5.2), "scratch", "audio" / "visual" (with scratch: the unimodal
# architecture), "paper" (batch 8, 2 s clips), "smoke", and a real corpus built with data_pipelines
# (README, "Training on real corpora"): "ravdess" (8 emotions, 6 folds), "cremad" (6 emotions, 10 folds),
# "enterface05" (6, 5 folds).
import ml_collections

from configs.common import parse_variants, vqmae_config, vqmae_model

# corpus -> (classes, folds, validation speakers) of the thesis's protocol ([Sadok-thesis] Sec. 5.3.1).
CORPORA = {"ravdess": (8, 6, 3), "cremad": (6, 10, 8), "enterface05": (6, 5, 4)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(
        arg, {"mean", "attention", "query2emo", "frozen", "scratch", "audio", "visual", "paper", "smoke", *CORPORA}
    )
    smoke, paper = "smoke" in variants, "paper" in variants
    pooling = next((p for p in ("mean", "attention", "query2emo") if p in variants), "query2emo")
    c = vqmae_config("vqmae_finetune", "vqmae_finetune", smoke=smoke, paper=paper)
    kind = "audio" if "audio" in variants else "visual" if "visual" in variants else "av"
    # Empty: the pre-training run's model. "scratch": the architecture to train from random weights.
    c.model = ml_collections.ConfigDict(vqmae_model(kind, paper=paper, smoke=smoke) if "scratch" in variants else {})
    c.finetune = ml_collections.ConfigDict(
        dict(
            pretrained="",  # run directory of a VQ-MAE pre-training (task vqmae): its model and tokenizers
            pooling=pooling,
            freeze_encoder="frozen" in variants,
            label="emotion",
            num_classes=8,
            splits=("train", "validation", "test"),
            num_folds=5,
            fold=0,
            validation_speakers=4,
            fold_seed=0,
            # Query2Emo: PyTorch nn.Transformer layers (8 heads; feed-forward 2048 in the code, smaller on CPU).
            head=dict(query2emo_mlp_dim=2048 if paper else 256),
        )
    )
    c.loss = ml_collections.ConfigDict(dict(gamma_pos=0.0, gamma_neg=4.0, label_smoothing=0.1))
    c.data.examples_per_batch = 8 if paper else 16
    # CPU schedule: at 150 steps and 3e-4 every model stayed at chance; at 300 steps and 1e-3 the audio-only
    # architecture learns (fold 0: 20 % of test windows), VQ-MAE-AV still does not (README, "Measured results").
    c.optimizer.update(learning_rate=1e-4 if paper else 1e-3, warmup_steps=30)
    # Every checkpoint is kept for model selection on the validation speakers (evaluate.py).
    c.train.update(num_steps=300, log_every=25, checkpoint_every=60, max_checkpoints_to_keep=1000)
    corpus = next((k for k in CORPORA if k in variants), None)
    if corpus:
        c.data.name = f"{corpus}/vqmae"
        c.finetune.num_classes, c.finetune.num_folds, c.finetune.validation_speakers = CORPORA[corpus]
    if smoke:
        c.data.examples_per_batch = 8
        c.finetune.update(num_folds=3, validation_speakers=1, head=dict(query2emo_mlp_dim=16))
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=6, log_every=2, checkpoint_every=3)
    return c
