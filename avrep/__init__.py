"""avrep: unsupervised audiovisual speech representation learning in JAX/Flax.

``avrep.load_checkpoint(path)`` loads a trained run for use from other Flax code (it needs neither Grain
nor TFDS).
"""

__version__ = "0.1.0"


def load_checkpoint(path):
    """See ``avrep.tasks.load_checkpoint``."""
    from avrep.tasks import load_checkpoint as _load  # deferred: ``import avrep`` stays light

    return _load(path)
