"""TFDS builders for real audiovisual / audio emotion corpora and speech folders (one module each, shared base)."""

from __future__ import annotations

import importlib

# corpus name (its TFDS name) -> module defining its builder class
CORPORA = {
    "mead": "mead",
    "ravdess": "ravdess",
    "cremad": "cremad",
    "enterface05": "enterface05",
    "voxceleb2": "voxceleb2",
    "emodb": "emodb",
    "iemocap": "iemocap",
    "speech_folder": "speech_folder",  # any folder of speech recordings (the DVAE family)
}


def builder_class(name: str):
    """The builder class of corpus ``name`` (imported on demand: importing registers it with TFDS)."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; expected one of {sorted(CORPORA)}")
    module = importlib.import_module(f"data_pipelines.corpora.{CORPORA[name]}")
    return next(v for v in vars(module).values() if getattr(v, "name", None) == name and isinstance(v, type))
