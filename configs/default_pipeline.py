# The default pipeline that `python train.py --workdir W` runs (no --config), on SynthAV:
#   1. W/data            SynthAV (mdvae setting) generated if absent
#   2. W/vqvae_audio     audio tokenizer      (configs/vqvae_audio.py)
#   3. W/vqvae_visual    visual tokenizer     (configs/vqvae_visual.py)
# then `python evaluate.py --workdir W` writes the tables into W/eval/.
# `--variant smoke` runs every stage's smoke config (tests).
import os

from configs import vqvae_audio, vqvae_visual

STAGES = (("vqvae_audio", vqvae_audio), ("vqvae_visual", vqvae_visual))


def get_stages(workdir: str, variant: str = ""):
    """[(stage name, stage workdir, config)] in the order they must run."""
    stages = []
    for name, module in STAGES:
        config = module.get_config(variant)
        config.data.data_dir = os.path.join(os.path.abspath(workdir), "data")
        stages.append((name, os.path.join(workdir, name), config))
    return stages
