"""Unsupervised speech enhancement with a DVAE-family speech prior learned on clean speech only
([DVAE-SE]; [Lin-thesis] Ch. 6; the slides' VAE + NMF baseline): pure functions of a model and its
variables, batched over utterances with ``vmap`` and compiled as one program per method.

* :mod:`frontend`: waveforms <-> padded STFT batches with a frame mask (DVAE_SE's front end).
* :mod:`nmf`: the NMF noise model and its multiplicative M-step.
* :mod:`priors`: a prior's encoder / frozen decoder split and its forward.
* :mod:`vem`: RVAE-VEM (any VAE / DKF / RVAE / SRNN prior), the authors' algorithm (parity-tested).
* :mod:`mcem`: Monte-Carlo EM with a VAE prior (or an AV-CVAE and its visual prior) and NMF noise.
* :mod:`av_cvae`: the AV-CVAE speech model conditioned on lip images, its modified ELBO and training.
* :mod:`noise_models`: the DVAE noise models LV / NO / NOLV: per-utterance optimisation (U-NA), trained on
  noisy speech (U-ND: training and the one-pass forward), and U-ND then adaptation (U-NDA).
"""

from avrep.models.enhancement.av_cvae import AVCVAE, CVAETrainSettings, train_cvae
from avrep.models.enhancement.frontend import Batch, batch_istft, batch_stft, length_batches
from avrep.models.enhancement.mcem import MCEMSettings, mcem, mcem_av
from avrep.models.enhancement.nmf import init_nmf, m_step
from avrep.models.enhancement.noise_models import NoiseModel, NoiseModelSettings, UNDSettings, train_und, una, und
from avrep.models.enhancement.priors import SUPPORTED, split_params
from avrep.models.enhancement.vem import VEMSettings, enhance_vem, vem, vem_objective

__all__ = [
    "AVCVAE",
    "SUPPORTED",
    "Batch",
    "CVAETrainSettings",
    "MCEMSettings",
    "NoiseModel",
    "NoiseModelSettings",
    "UNDSettings",
    "VEMSettings",
    "batch_istft",
    "batch_stft",
    "enhance_vem",
    "init_nmf",
    "length_batches",
    "m_step",
    "mcem",
    "mcem_av",
    "split_params",
    "train_cvae",
    "train_und",
    "una",
    "und",
    "vem",
    "vem_objective",
]
