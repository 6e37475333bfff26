"""Foreign weights -> avrep variables and runs: PyTorch state_dicts (``state_dict``), the DVAE family's
released checkpoints (``dvae``), the authors' speech VQ-VAEs (``vqvae``), their VQ-MAE transformers
(``vqmae``: ``load_vqmae`` gives the model and its variables), and whole run directories
(``importing``: ``import_dvae``, ``import_speech_vqvae``; command line: ``python -m avrep.convert``)."""


def import_dvae(*args, **kwargs):
    """See ``avrep.convert.importing.import_dvae``."""
    from avrep.convert.importing import import_dvae as _import  # deferred: the converters stay light

    return _import(*args, **kwargs)


def import_speech_vqvae(*args, **kwargs):
    """See ``avrep.convert.importing.import_speech_vqvae``."""
    from avrep.convert.importing import import_speech_vqvae as _import

    return _import(*args, **kwargs)


def load_vqmae(*args, **kwargs):
    """See ``avrep.convert.vqmae.load_vqmae``."""
    from avrep.convert.vqmae import load_vqmae as _load

    return _load(*args, **kwargs)
