# VQ-MDVAE stage 2: the multimodal dynamical VAE on the frozen tokenizers' pre-quantisation features.
#   python train.py --config configs/vqmdvae.py --workdir runs/vqmdvae \
#       --config.tokenizers.audio=runs/vqvae_audio --config.tokenizers.visual=runs/vqvae_visual
# Needs the two tokenizers of the MDVAE setting (configs/vqvae_audio.py, configs/vqvae_visual.py).
# Paper sizes (spec mdvae.md §3.1): w 84, z_av 16, z_a 8, z_v 8, T = 30 frames, features 512 + 2048.
# Variants: "smoke" (CPU seconds).
import ml_collections

from configs.common import base_config, parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"smoke"})
    smoke = "smoke" in variants
    c = base_config("mdvae", smoke)
    c.name = "vqmdvae"
    c.task = "mdvae"
    # Run directories of the frozen tokenizers (the default pipeline fills them in).
    c.tokenizers = ml_collections.ConfigDict(dict(audio="", visual=""))
    # Every MDVAE field may be set here; the defaults are the paper's VQ-MDVAE (avrep/models/mdvae.py).
    c.model = ml_collections.ConfigDict(dict(dim_audio=512, dim_visual=2048, dim_w=84, dim_zav=16, dim_za=8,
                                             dim_zv=8, activations="paper", zav_in_modal_posteriors=True))
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
