# The default pipeline that `python train.py --workdir W` runs (no --config), on SynthAV:
#   1. W/data            SynthAV (mdvae setting) generated if absent
#   2. W/vqvae_audio     audio tokenizer      (configs/vqvae_audio.py)
#   3. W/vqvae_visual    visual tokenizer     (configs/vqvae_visual.py)
#   4. W/vqmdvae         VQ-MDVAE stage 2 on the frozen tokenizers (configs/vqmdvae.py)
# then `python evaluate.py --workdir W` writes the tables into W/eval/.
# `--variant smoke` runs every stage's smoke config (tests).
import os

from configs import vqmdvae, vqvae_audio, vqvae_visual

STAGES = (("vqvae_audio", vqvae_audio), ("vqvae_visual", vqvae_visual), ("vqmdvae", vqmdvae))


def get_stages(workdir: str, variant: str = ""):
    """[(stage name, stage workdir, config)] in the order they must run."""
    workdir = os.path.abspath(workdir)
    stages = []
    for name, module in STAGES:
        config = module.get_config(variant)
        config.data.data_dir = os.path.join(workdir, "data")
        if "tokenizers" in config:  # stage 2 reads the tokenizers trained by the stages before it
            config.tokenizers.audio = os.path.join(workdir, "vqvae_audio")
            config.tokenizers.visual = os.path.join(workdir, "vqvae_visual")
        stages.append((name, os.path.join(workdir, name), config))
    return stages
