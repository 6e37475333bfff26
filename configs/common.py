"""Shared config blocks. Every experiment config builds on these."""

from __future__ import annotations

import ml_collections

# The two papers' settings: MDVAE (64x64 faces @ 30 fps, hop 533 = 16000/30) and VQ-MAE
# (96x96 faces @ 25 fps, audio at 50 Hz with hop 320).
SETTINGS = {
    "mdvae": dict(dataset="synthav/mdvae", image_size=64, fps=30, hop=533),
    "vqmae": dict(dataset="synthav/vqmae", image_size=96, fps=25, hop=320),
}


# VQ-MAE-S ([Sadok-thesis] App. C.3): the VQ-MAE STFT with 75 % overlap, hop 256 at 16 kHz (62.5 Hz audio frames).
VQMAE_S_HOP = 256
# Clip of an audio-only VQ-MAE in audio frames (its own clock, no video): VQ-MAE-S's 200 ([code-vqmae-s]) with
# "paper", else 1 s at the CPU configs' hop 320 (as the audiovisual clips' audio), smoke 20.
AUDIO_ONLY_FRAMES = {"paper": 200, "cpu": 50, "smoke": 20}


# Config key model.dtype of every family: the computation dtype (avrep/nn/precision.py), "float32", "bfloat16" or
# "auto" (bfloat16 on GPU / TPU, float32 on CPU); parameters and optimizer state stay float32 either way.
DTYPE = "float32"


def parse_variants(arg: str | None, allowed: set[str]) -> set[str]:
    """'vqmae,smoke' -> {'vqmae', 'smoke'}, rejecting unknown variants by name."""
    variants = {v for v in (arg or "").split(",") if v}
    unknown = variants - allowed
    if unknown:
        raise ValueError(f"unknown config variant(s) {sorted(unknown)}; expected any of {sorted(allowed)}")
    return variants


def base_config(setting: str, smoke: bool) -> ml_collections.ConfigDict:
    s = SETTINGS[setting]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(
        dict(
            name=s["dataset"] + ("_smoke" if smoke else ""),
            data_dir="",
            train_split="train",
            eval_split="test",
            image_size=s["image_size"],
            fps=s["fps"],
            # Host memory for slim decoded training records (data_pipelines.pipelines._SlimCache); 0 = off.
            cache_mb=2048,
        )
    )
    c.audio = ml_collections.ConfigDict(
        dict(sample_rate=16000, n_fft=1024, hop=s["hop"], window="hann", pad_mode="constant")
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))
    # checkpoint_every_minutes: also save when that much time has passed since the last save (0: off).
    c.train = ml_collections.ConfigDict(
        dict(
            num_steps=1000, log_every=50, checkpoint_every=500, max_checkpoints_to_keep=2, checkpoint_every_minutes=0.0
        )
    )
    # Test hooks: a digest of every batch in batches.process<i>.jsonl; simulate_signal (SIGKILL, SIGTERM or
    # SIGINT) sent to the run after step simulate_preemption_at_step (resume tests).
    c.debug = ml_collections.ConfigDict(
        dict(log_batch_digest=False, simulate_preemption_at_step=-1, simulate_signal="SIGKILL")
    )
    return c


def frame_training(
    c: ml_collections.ConfigDict,
    *,
    examples_per_batch: int,
    frames_per_example: int,
    learning_rate: float,
    num_steps: int,
    smoke: bool,
    smoke_frames: int,
) -> None:
    """Batch, Adam with warm-up and cosine decay, and schedule of a frame-wise (tokenizer) run."""
    c.data.examples_per_batch = examples_per_batch
    c.data.frames_per_example = frames_per_example
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", learning_rate=learning_rate, schedule="cosine", warmup_steps=50, final_fraction=0.05)
    )
    c.train.num_steps = num_steps
    c.train.checkpoint_every = max(num_steps // 4, 1)
    if smoke:
        c.data.examples_per_batch, c.data.frames_per_example = 8, smoke_frames
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=12, log_every=4, checkpoint_every=6)


def stage2_config(name: str, task: str, model: dict, *, smoke: bool, raw: bool) -> ml_collections.ConfigDict:
    """A sequence-VAE run (MDVAE family) on T = 30 frame windows of the MDVAE setting."""
    c = base_config("mdvae", smoke)
    c.name, c.task = name, task
    # Run directories of the frozen tokenizers (the default pipeline fills them in); unused with raw inputs.
    c.tokenizers = ml_collections.ConfigDict(dict(audio="", visual=""))
    # kind: "vq" the tokenizers' features; "raw" log power spectra and pixels.
    # scaling: "none": features as they come (the papers); "standardize": per-dimension mean / std of the
    # training inputs; "modality": per-dimension mean, one std per modality (see avrep/tasks/mdvae.py and
    # docs/RESULTS.md for the measured trade-offs).
    c.features = ml_collections.ConfigDict(dict(kind="raw" if raw else "vq", scaling="none"))
    # VQ features computed once into a cache (3x faster on CPU) instead of in every step; the cache lives
    # in <workdir>/feature_cache/<split>, or <feature_cache_dir>/<split> if set (shared between runs).
    c.data.feature_cache = True
    c.data.feature_cache_dir = ""
    c.model = ml_collections.ConfigDict(dict(model, dtype=DTYPE))
    # "elbo": the per-sequence negative ELBO ([MDVAE] Sec. 2.4); "code": the authors' scaling ([code-mdvae]).
    # likelihood "unit": unit-variance Gaussians (the papers); "calibrated": each modality's variance is its
    # batch mean squared error, or per modality "visual=calibrated" (our option; avrep/models/mdvae.mdvae_loss,
    # README for the measured trade-off).
    c.loss = ml_collections.ConfigDict(dict(normalization="elbo", kl_warmup_steps=0, likelihood="unit"))
    c.data.examples_per_batch = 32
    c.data.frames_per_example = 30  # T
    # The authors: Adam 2e-5, batch 1024, 1000 epochs on GPU; CPU-sized here.
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=50, final_fraction=0.05)
    )
    c.train.num_steps = 2000
    c.train.checkpoint_every = 500
    if smoke:
        c.data.examples_per_batch = 4
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=8, log_every=4, checkpoint_every=4)
    return c


def vqmae_config(name: str, task: str, *, smoke: bool, paper: bool) -> ml_collections.ConfigDict:
    """A VQ-MAE run (pre-training or fine-tuning) on the VQ-MAE setting's frozen tokenizers' index grids.

    CPU-sized unless ``paper``: clips of 1 s (25 video, 50 audio frames; the thesis's code uses 2 s) and
    a narrower, shallower transformer (set by the configs). AdamW (0.9, 0.95), weight decay 0.05, cosine
    schedule with warm-up ([Sadok-thesis] Sec. 5.3.1).
    """
    c = base_config("vqmae", smoke)
    c.name, c.task = name, task
    # Run directories of the frozen VQ-MAE-setting tokenizers (configs/vqvae_*.py:vqmae; the pipeline fills them).
    # batch_stats_mode: BatchNorm statistics of the audio tokenizer, "" its run's own, "running", or "batch" (the
    # authors' tokenisation; avrep/features/tokenizers.py). Only the tokenizers a model reads are loaded.
    c.tokenizers = ml_collections.ConfigDict(dict(audio="", visual="", batch_stats_mode=""))
    # Index grids are cached per split in <feature_cache_dir or workdir/feature_cache>/<split>.
    c.data.feature_cache_dir = ""
    c.data.frames_per_example = 50 if paper else 25  # video frames per clip (audio: twice as many)
    c.data.examples_per_batch = 128 if paper else 16
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",
            learning_rate=5e-4,
            b1=0.9,
            b2=0.95,
            weight_decay=0.05,
            schedule="cosine",
            warmup_steps=100,
            final_fraction=0.0,
        )
    )
    if smoke:
        c.data.frames_per_example, c.data.examples_per_batch = 10, 8
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=6, log_every=2, checkpoint_every=3)
    return c


def vqmae_model(kind: str, *, paper: bool, smoke: bool, fusion: str = "saf") -> dict:
    """Fields of a VQ-MAE module (avrep.tasks.vqmae.MODELS[kind]).

    Paper: width 320 (40 audio indices x 8, 80 visual x 4), 4 heads, MLP ratio 2, 12 / 4 blocks, learned
    positions from N(0, 0.02²); VQ-MAE-S ("audio"): the same with MLP ratio 4 and 200-frame clips (20 x 16 = 320
    tokens of 10 frames x 4 indices). CPU: width 160, 4 / 2 blocks, 8 values per index embedding for both
    modalities (tokens of 320 / 640 values projected to the width: width / indices would leave 2 values
    per visual index, too few to tell 512 codes apart) and positions initialised with the tokens' sin-cos
    table (neighbouring tokens are related from the first step); smoke: width 80, 1 / 1 block.
    """
    if smoke:
        size, dims = (
            dict(width=80, num_heads=2, encoder_depth=1, decoder_depth=1),
            dict(audio_code_dim=2, visual_code_dim=1),
        )
    elif paper:
        size, dims = (
            dict(width=320, num_heads=4, encoder_depth=12, decoder_depth=4),
            dict(audio_code_dim=8, visual_code_dim=4),
        )
    else:
        size, dims = (
            dict(width=160, num_heads=4, encoder_depth=4, decoder_depth=2),
            dict(audio_code_dim=8, visual_code_dim=8),
        )
    frames = 50 if paper else (10 if smoke else 25)
    # MLP ratio: 2 in VQ-MAE-AV (its parameter counts), 4 in VQ-MAE-S (timm's default in [code-vqmae-s]).
    mlp_ratio = 4.0 if paper and kind == "audio" else 2.0
    model = dict(kind=kind, mlp_ratio=mlp_ratio, position_init="normal" if paper else "sincos", dtype=DTYPE, **size)
    if paper:  # the authors' blocks have no query / key / value biases: the thesis's parameter counts
        model["attention_bias"] = False
    if kind in ("av", "audio"):
        audio_frames = audio_only_frames(paper=paper, smoke=smoke) if kind == "audio" else 2 * frames
        model.update(audio_frames=audio_frames, audio_bins=64, audio_codes=256, audio_code_dim=dims["audio_code_dim"])
    if kind in ("av", "visual"):
        model.update(
            visual_frames=frames,
            visual_height=24,
            visual_width=24,
            visual_codes=512,
            visual_code_dim=dims["visual_code_dim"],
        )
    if kind == "av":
        # Paired ratios (example 2k + 1 gets example 2k's draw swapped): the same expected loss as
        # independent draws (each example's ratios are still Dir(1, 1)), two examples per buffer row.
        model.update(
            encoder_fusion=fusion, decoder_fusion=fusion, masking="dirichlet", global_tokens=True, paired_ratios=True
        )
    else:
        model.update(mask_unit="frame" if kind == "audio" else "patch", mask_ratio=0.8)
    return model


def audio_only_frames(*, paper: bool, smoke: bool) -> int:
    return AUDIO_ONLY_FRAMES["paper" if paper else "smoke" if smoke else "cpu"]


def use_audio_clock(c: ml_collections.ConfigDict, *, paper: bool, smoke: bool) -> None:
    """An audio-only VQ-MAE (VQ-MAE-S) has no video: data.frames_per_example counts its audio frames, and with
    ``paper`` the STFT is VQ-MAE-S's (hop 256; its tokenizer: configs/vqvae_audio.py:vqmae_s)."""
    c.data.frames_per_example = audio_only_frames(paper=paper, smoke=smoke)
    if paper:
        c.audio.hop = VQMAE_S_HOP


def epoch_schedule(
    c: ml_collections.ConfigDict, *, num_epochs: float, warmup_epochs: float = 0.0, checkpoint_every_epochs: float
) -> None:
    """A schedule stated in epochs, as the papers state it (the ``:paper`` variants): ``train`` converts it to steps
    from the training split's size and the global batch and prints the result (avrep/training/epochs.py). The step
    keys are cleared; to give steps instead, set the ``*_epochs`` key to 0 (e.g. ``--config.train.num_epochs=0
    --config.train.num_steps=5000``)."""
    # Floats, so that a command line may give fractions (--config.train.num_epochs=0.5).
    c.train.update(num_epochs=float(num_epochs), num_steps=0, checkpoint_every_epochs=float(checkpoint_every_epochs))
    c.train.checkpoint_every = 0
    c.optimizer.update(warmup_epochs=float(warmup_epochs), warmup_steps=0)


def paper_tokenizer_training(c: ml_collections.ConfigDict, *, examples_per_batch: int, frames_per_example: int) -> None:
    """The authors' tokenizer recipe (their configs, [code-vqmae-s] / [code-vqmae-av]; the papers give none, [MDVAE]
    says Adam only, so the MDVAE setting's tokenizers get it too): Adam, lr 1e-3, constant, 20 epochs of frames."""
    c.data.examples_per_batch, c.data.frames_per_example = examples_per_batch, frames_per_example
    c.optimizer.update(name="adam", learning_rate=1e-3, schedule="constant")
    epoch_schedule(c, num_epochs=20, checkpoint_every_epochs=5)
