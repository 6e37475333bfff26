# The DVAE pipeline: `python train.py --workdir W --pipeline dvae` trains every model of the DVAE family
# on SynthAV's speech (W/data, synthav/speech, generated if absent), one run per model in W/<model>
# (configs/dvae.py), then `python evaluate.py --workdir W` writes the analysis-resynthesis table
# ([Lin-thesis] Table 7.1 form) into W/eval/. `--variant smoke` runs every stage's smoke config (tests).
import os

from configs import dvae

STAGES = ("vae", "dkf", "storn", "vrnn", "srnn_tf", "srnn", "rvae", "rvae_noncausal", "dsae")


def get_stages(workdir: str, variant: str = "", models: tuple[str, ...] = STAGES):
    """[(stage name, stage workdir, config)] in the order they must run: one run per model of ``models``
    (configs/dvae.py variants) in W/<model>, trained on W/data."""
    workdir = os.path.abspath(workdir)
    stages = []
    for name in models:
        config = dvae.get_config(",".join(v for v in (name, variant) if v))
        config.data.data_dir = os.path.join(workdir, "data")
        stages.append((name, os.path.join(workdir, name), config))
    return stages
