# The source-filter VAE ([SF-VAE] = [Sadok-thesis] Ch. 3; keys: docs/REFERENCES.md): a frame-wise Itakura-Saito VAE
# of speech power spectra (513 -> 256 -> 64 -> 2 x 16, tanh; periodic Hann 1024, hop 256, reflect padding), then
# the f0 / formant subspaces of its latent space learned from labelled synthetic vowels (avrep.models.source_filter).
#   python train.py --workdir W --pipeline sourcefilter   # trains the IS-VAE on SynthAV speech, learns the subspaces
#   python evaluate.py --workdir W                        # Table 3.1, orthogonality, Table 3.3 form, Fig. 3.6 form
#   python -m avrep.evaluation.source_filter --run W/sf_vae --wav in.wav --out out.wav --f0 150
# Variants: "smoke" (CPU seconds, tests); "paper" (the authors' batch of 512 frames, more steps: accelerators).
import ml_collections

from configs import dvae
from configs.common import parse_variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = parse_variants(arg, {"paper", "smoke"})
    c = dvae.get_config(",".join(["vae", *sorted(variants)]))
    c.name, c.task = "sf_vae", "source_filter"
    c.audio = ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=1024, hop=256, window="hann", pad_mode="reflect"))
    c.model = ml_collections.ConfigDict(dict(preset="sf_vae/VAE"))
    # [Sadok-thesis] App. A.1: Adam, lr 1e-3, beta 1; the authors' code has no KL warm-up.
    c.loss = ml_collections.ConfigDict(dict(beta=1.0, kl_warmup_delay=0, kl_warmup_steps=0))
    c.optimizer.learning_rate = 1e-3
    if "paper" not in variants and "smoke" not in variants:
        # 6000 steps (~13 min on 2 CPU cores): at 3000 the decoder did not yet resolve the harmonics of f0 below
        # ~140 Hz in the sweeps (f0 control missed by a median 26 % on validation speakers' vowels; 0.8 % at 6000).
        c.train.update(num_steps=6000, checkpoint_every=250, max_checkpoints_to_keep=4, early_stopping_patience=4)
    # The subspace learning (avrep.models.source_filter): the labelled trajectories ([Sadok-thesis] App. A.1,
    # scaled by trajectory_scale: 1 = 226 / 401 / 401 / 241 frames), the retained-variance rule of Table 3.1,
    # the pieces of the per-coordinate piecewise-linear regression (the authors' code: 20) and the f0 median filter.
    # evaluate.py's sizes (avrep.evaluation.source_filter_experiments): test vowels x targets per factor for the
    # Table 3.3 form, synthetic utterances and SNRs (dB) of the gross-pitch-error experiment (Fig. 3.6 form).
    c.source_filter = ml_collections.ConfigDict(
        dict(
            retained_variance=0.8,
            segments=20,
            median_frames=5,
            trajectory_scale=1.0,
            seed=0,
            eval_vowels=20,
            eval_targets=5,
            gpe_utterances=8,
            gpe_seconds=2.0,
            gpe_snrs=tuple(range(-10, 45, 5)),
        )
    )
    if "smoke" in variants:
        c.source_filter.update(
            trajectory_scale=0.25, segments=4, eval_vowels=2, eval_targets=2, gpe_utterances=1, gpe_seconds=1.0,
            gpe_snrs=(0, 20),
        )  # fmt: skip
    return c
