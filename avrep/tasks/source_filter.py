"""Training task of the source-filter VAE's IS-VAE ([SF-VAE] = [Sadok-thesis] Ch. 3; keys: docs/REFERENCES.md).

The network and its loss are the DVAE family's frame-wise VAE (preset ``sf_vae/VAE``; :class:`DVAETask`); the
task has its own name so that a run says what it is for: ``evaluate.py`` learns (or reads) its f0 / formant
subspaces and writes the source-filter tables (``avrep.evaluation.source_filter``). The config block
``source_filter`` holds the subspace-learning settings (``configs/source_filter.py``).
"""

from __future__ import annotations

from avrep.tasks.dvae import DVAETask


class SourceFilterTask(DVAETask):
    @property
    def display_name(self) -> str:
        return "IS-VAE (source-filter)"
