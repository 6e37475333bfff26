# The source-filter pipeline: `python train.py --workdir W --pipeline sourcefilter` trains the IS-VAE on SynthAV's
# speech (W/data, synthav/speech, generated if absent) in W/sf_vae (configs/source_filter.py), then learns its f0 /
# formant subspaces and regressions into W/sf_vae/source_filter.npz; `python evaluate.py --workdir W` writes the
# source-filter tables and figures into W/eval/. `--variant smoke` runs the smoke config (tests).
import os

from configs import source_filter


def get_stages(workdir: str, variant: str = ""):
    """[(stage name, stage workdir, config)]: the one IS-VAE stage."""
    workdir = os.path.abspath(workdir)
    config = source_filter.get_config(variant or None)
    config.data.data_dir = os.path.join(workdir, "data")
    return [("sf_vae", os.path.join(workdir, "sf_vae"), config)]
