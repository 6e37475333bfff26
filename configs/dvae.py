# A dynamical VAE of speech (Lin's thesis; keys: docs/REFERENCES.md): power spectrograms of 16 kHz speech
# (1024-sample sine window, hop 256, 513 bins), Itakura-Saito likelihood, KL warm-up, Adam.
#   python train.py --config configs/dvae.py:srnn --workdir runs/dvae/srnn
#   python train.py --workdir W --pipeline dvae            # every model of the family on SynthAV speech
#   python evaluate.py --workdir W     # the analysis-resynthesis table ([Lin-thesis] Table 7.1 form)
# Variants (comma-separated): the model, one of vae, dkf, storn, vrnn, srnn (scheduled sampling),
# srnn_tf (teacher forcing only), rvae (causal), rvae_noncausal, dsae; "paper" (batch 128, the DVAE
# benchmark's 500 epochs of WSJ0 are ~50k steps: accelerators); "smoke" (CPU seconds, tests).
# Layer sizes: the DVAE benchmark's speech configurations ([code-dvae]) with 513 bins.
import ml_collections

from configs.common import DTYPE, parse_variants

MODELS = {
    "vae": dict(preset="dvae/VAE"),
    "dkf": dict(preset="dvae/DKF"),
    "storn": dict(preset="dvae/STORN"),
    "vrnn": dict(preset="dvae/VRNN"),
    "srnn": dict(preset="dvae/SRNN", scheduled_sampling=True),
    "srnn_tf": dict(preset="dvae/SRNN"),
    "rvae": dict(preset="dvae/RVAE-Causal"),
    "rvae_noncausal": dict(preset="dvae/RVAE-NonCausal"),
    "dsae": dict(preset="dvae/DSAE"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {*MODELS, "paper", "smoke"})
    chosen = [m for m in MODELS if m in variants]
    if len(chosen) > 1:
        raise ValueError(f"config variants {chosen}: choose one model")
    kind = chosen[0] if chosen else "srnn"
    smoke, paper = "smoke" in variants, "paper" in variants
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.name, c.task = f"dvae_{kind}", "dvae"
    c.data = ml_collections.ConfigDict(
        dict(
            name="synthav/speech_smoke" if smoke else "synthav/speech",
            data_dir="",
            train_split="train",
            validation_split="validation",
            eval_split="test",
            examples_per_batch=128 if paper else 32,
            frames_per_example=50,  # the DVAE benchmark's sequence length (0.8 s)
            validation_batches=8,
            cache_mb=1024,
        )
    )
    c.audio = ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=1024, hop=256, window="sine", pad_mode="reflect"))
    c.model = ml_collections.ConfigDict(dict(MODELS[kind], x_dim=513, dtype=DTYPE))
    # beta 1; KL warm-up after a delay (the authors: 0 for 10 epochs, then +0.2 per 10 epochs); scheduled
    # sampling of the SRNN: use_pred from 0 at ss_start to ss_max at ss_end steps.
    c.loss = ml_collections.ConfigDict(
        dict(beta=1.0, kl_warmup_delay=100, kl_warmup_steps=300, ss_start=200, ss_end=700, ss_max=1.0)
    )
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=2e-3, schedule="constant"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))
    # Validation loss at every checkpoint (fixed windows of the validation split); training stops after
    # early_stopping_patience checkpoints without improvement; evaluation uses the best checkpoint.
    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=1000,
            log_every=50,
            checkpoint_every=100,
            max_checkpoints_to_keep=6,
            early_stopping_patience=5,
            checkpoint_every_minutes=0.0,
            # decoder output bias from the data's mean spectrum (avrep's choice; 0: zero, the authors')
            output_bias_utterances=64,
        )
    )
    c.debug = ml_collections.ConfigDict(
        dict(log_batch_digest=False, simulate_preemption_at_step=-1, simulate_signal="SIGKILL")
    )
    if paper:
        # The DVAE benchmark: 500 epochs, patience 50, warm-up over 60 epochs (~100 steps per epoch of WSJ0).
        c.loss.update(kl_warmup_delay=1000, kl_warmup_steps=5000, ss_start=2000, ss_end=10000)
        c.train.update(
            num_steps=50_000,
            log_every=100,
            checkpoint_every=1000,
            max_checkpoints_to_keep=51,
            early_stopping_patience=50,
        )
    if smoke:
        c.data.update(examples_per_batch=8, validation_batches=2)
        c.loss.update(kl_warmup_delay=2, kl_warmup_steps=4, ss_start=2, ss_end=6)
        c.train.update(num_steps=8, log_every=4, checkpoint_every=4, max_checkpoints_to_keep=3)
    return c
