"""avrep: unsupervised audiovisual speech representation learning in JAX/Flax.

``avrep.load_checkpoint(path)`` loads a trained run for use from other Flax code.
"""
__version__ = "0.1.0"


def load_checkpoint(path):
    """See ``avrep.training.checkpointing.load_checkpoint``."""
    from avrep.training.checkpointing import load_checkpoint as _load

    return _load(path)
