"""Unsupervised speech enhancement with a DVAE-family speech prior learned on clean speech only
([DVAE-SE]; [Lin-thesis] Ch. 6; the slides' VAE + NMF baseline): pure functions of a model and its
variables, batched over utterances with ``vmap`` and compiled as one program per method.

* :mod:`frontend`: waveforms <-> padded STFT batches with a frame mask (DVAE_SE's front end).
* :mod:`nmf`: the NMF noise model and its multiplicative M-step.
* :mod:`priors`: a prior's encoder / frozen decoder split and its forward.
* :mod:`vem`: RVAE-VEM (any VAE / DKF / RVAE / SRNN prior), the authors' algorithm (parity-tested).
* :mod:`mcem`: Monte-Carlo EM with a VAE prior and NMF noise.
* :mod:`noise_models`: the DVAE noise models LV / NO / NOLV, per-utterance optimisation (U-NA).
"""

from avrep.models.enhancement.frontend import Batch, batch_istft, batch_stft, length_batches
from avrep.models.enhancement.mcem import MCEMSettings, mcem
from avrep.models.enhancement.nmf import init_nmf, m_step
from avrep.models.enhancement.noise_models import NoiseModel, NoiseModelSettings, una
from avrep.models.enhancement.priors import SUPPORTED, split_params
from avrep.models.enhancement.vem import VEMSettings, enhance_vem, vem, vem_objective

__all__ = [
    "SUPPORTED",
    "Batch",
    "MCEMSettings",
    "NoiseModel",
    "NoiseModelSettings",
    "VEMSettings",
    "batch_istft",
    "batch_stft",
    "enhance_vem",
    "init_nmf",
    "length_batches",
    "m_step",
    "mcem",
    "split_params",
    "una",
    "vem",
    "vem_objective",
]
