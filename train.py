"""Trains avrep models.

  python train.py --workdir W                      # the default pipeline on SynthAV (all stages)
  python train.py --workdir W --pipeline vqmae     # the VQ-MAE pipeline (tokenizers, pre-training, fine-tuning)
  python train.py --workdir W --pipeline dvae      # the DVAE family on SynthAV speech (one run per model)
  python train.py --config configs/X.py --workdir W [--config.train.num_steps=100]
  python train.py --config configs/X.py:smoke --workdir W

Multi-host: add --coordinator_address host:port --num_processes N --process_id i on every host
(or --distributed_auto on TPU pods / SLURM). Every process reads its own slice of the data.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from avrep.training import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=False
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, eval).", required=True)
_PIPELINE = flags.DEFINE_enum(
    "pipeline",
    "mdvae",
    ["mdvae", "vqmae", "dvae"],
    "Without --config: the default pipeline (configs/default_pipeline.py: tokenizers and "
    "VQ-MDVAE), the VQ-MAE one (configs/vqmae_pipeline.py) or the DVAE family on speech "
    "(configs/dvae_pipeline.py).",
)
_VARIANT = flags.DEFINE_string("variant", "", "Default pipeline only: config variant for every stage, e.g. 'smoke'.")
_STAGES = flags.DEFINE_list("stages", [], "Default pipeline only: run just these stages.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (TPU pod, SLURM).")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # Orbax logs every file operation, and read-only opens as warnings
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_AUTO.value)
    from avrep.training.loop import train  # after distributed init: importing JAX users is fine, calling is not

    if _CONFIG.value is not None:
        train(_CONFIG.value, _WORKDIR.value)
        return
    if _PIPELINE.value == "vqmae":
        from configs.vqmae_pipeline import get_stages
    elif _PIPELINE.value == "dvae":
        from configs.dvae_pipeline import get_stages
    else:
        from configs.default_pipeline import get_stages

    stages = get_stages(_WORKDIR.value, _VARIANT.value)
    unknown = set(_STAGES.value) - {name for name, _, _ in stages}
    if unknown:
        raise app.UsageError(
            f"--stages: unknown stage(s) {sorted(unknown)}; the default pipeline has {[name for name, _, _ in stages]}"
        )
    for name, workdir, config in stages:
        if not _STAGES.value or name in _STAGES.value:
            print(f"[avrep] stage {name} -> {workdir}", flush=True)
            train(config, workdir)


if __name__ == "__main__":
    app.run(main)
