"""Shared config blocks. Every experiment config builds on these."""
from __future__ import annotations

import ml_collections

# The two papers' settings: MDVAE (64x64 faces @ 30 fps, hop 533 = 16000/30) and VQ-MAE
# (96x96 faces @ 25 fps, audio at 50 Hz with hop 320).
SETTINGS = {
    "mdvae": dict(dataset="synthav/mdvae", image_size=64, fps=30, hop=533),
    "vqmae": dict(dataset="synthav/vqmae", image_size=96, fps=25, hop=320),
}


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
    c.data = ml_collections.ConfigDict(dict(
        name=s["dataset"] + ("_smoke" if smoke else ""), data_dir="", train_split="train",
        eval_split="test", image_size=s["image_size"], fps=s["fps"],
        # Host memory for slim decoded training records (data_pipelines.pipelines._SlimCache); 0 = off.
        cache_mb=2048))
    c.audio = ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=1024, hop=s["hop"], window="hann",
                                             pad_mode="constant"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))
    # log_batch_digest and simulate_preemption_at_step exist for the resume tests.
    c.train = ml_collections.ConfigDict(dict(num_steps=1000, log_every=50, checkpoint_every=500,
                                             max_checkpoints_to_keep=2, log_batch_digest=False,
                                             simulate_preemption_at_step=-1))
    return c


def frame_training(c: ml_collections.ConfigDict, *, examples_per_batch: int, frames_per_example: int,
                   learning_rate: float, num_steps: int, smoke: bool, smoke_frames: int) -> None:
    """Batch, Adam with warm-up and cosine decay, and schedule of a frame-wise (tokenizer) run."""
    c.data.examples_per_batch = examples_per_batch
    c.data.frames_per_example = frames_per_example
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=learning_rate, schedule="cosine",
                                                 warmup_steps=50, final_fraction=0.05))
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
    # Inputs: "vq" the tokenizers' features; "raw" log power spectra and pixels.
    c.features = "raw" if raw else "vq"
    # VQ features computed once into a cache (3x faster on CPU) instead of in every step; the cache lives
    # in <workdir>/feature_cache/<split> unless feature_cache_dir names another (shared) one.
    c.data.feature_cache = True
    c.data.feature_cache_dir = ""
    # "none": features as they come (the papers); "standardize": per-dimension mean / std of the training
    # inputs (see avrep/training/tasks/mdvae.py and the README for the measured trade-off).
    c.feature_scaling = "none"
    c.model = ml_collections.ConfigDict(model)
    # "elbo": the per-sequence negative ELBO (spec §1.4); "code": the authors' scaling (spec §10.10).
    c.loss = ml_collections.ConfigDict(dict(normalization="elbo", kl_warmup_steps=0))
    c.data.examples_per_batch = 32
    c.data.frames_per_example = 30  # T
    # The authors: Adam 2e-5, batch 1024, 1000 epochs on GPU; CPU-sized here.
    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3, schedule="cosine",
                                                 warmup_steps=50, final_fraction=0.05))
    c.train.num_steps = 2000
    c.train.checkpoint_every = 500
    if smoke:
        c.data.examples_per_batch = 4
        c.optimizer.warmup_steps = 2
        c.train.update(num_steps=8, log_every=4, checkpoint_every=4)
    return c
