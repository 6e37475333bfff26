"""Trains avrep models.

  python train.py --workdir W                      # the default pipeline on SynthAV (all stages)
  python train.py --workdir W --pipeline vqmae     # the VQ-MAE pipeline (tokenizers, pre-training, fine-tuning)
  python train.py --workdir W --pipeline dvae      # the DVAE family on SynthAV speech (one run per model)
  python train.py --workdir W --pipeline sourcefilter  # the source-filter VAE (IS-VAE, then its subspaces)
  python train.py --workdir W --pipeline se        # speech enhancement: speech priors + noisy SynthAV test sets
  python train.py --config configs/X.py --workdir W [--config.train.num_steps=100]
  python train.py --config configs/X.py:smoke --workdir W

Any config key can be overridden on the command line: --config.key=value (e.g. --config.train.num_steps=100,
--config.data.data_dir=D); an unknown key is an error. A rerun resumes from the latest intact checkpoint (a
finished run returns at once); SIGTERM saves a checkpoint and exits (status 143), Ctrl-C lets a checkpoint in
flight finish and exits (130); --config.train.checkpoint_every_minutes=M also saves every M minutes.

Multi-host: add --coordinator_address host:port --num_processes N --process_id i on every host
(or --distributed_auto on TPU pods / SLURM). Every process reads its own slice of the data.
"""

import glob
import importlib.util
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from avrep.runs import CheckpointError
from avrep.training import distributed
from data_pipelines.spec import DataError

REPO = os.path.dirname(os.path.abspath(__file__))

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]).", lock_config=False
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, eval).", required=True)
_PIPELINE = flags.DEFINE_enum(
    "pipeline",
    "mdvae",
    ["mdvae", "vqmae", "dvae", "sourcefilter", "se"],
    "Without --config: the default pipeline (configs/default_pipeline.py: tokenizers and "
    "VQ-MDVAE), the VQ-MAE one (configs/vqmae_pipeline.py), the DVAE family on speech "
    "(configs/dvae_pipeline.py), the source-filter VAE (configs/source_filter_pipeline.py) or speech "
    "enhancement (configs/se_pipeline.py: speech priors and noisy test sets).",
)
_VARIANT = flags.DEFINE_string("variant", "", "Default pipeline only: config variant for every stage, e.g. 'smoke'.")
_STAGES = flags.DEFINE_list("stages", [], "Default pipeline only: run just these stages.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (TPU pod, SLURM).")


def _available_configs() -> str:
    names = sorted(
        os.path.relpath(p, REPO)
        for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
        if os.path.basename(p) not in ("__init__.py", "common.py")
    )
    return "Available configs (variants after ':', e.g. :smoke; see each file's first lines):\n  " + "\n  ".join(names)


def _config_arg(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_override(argv: list[str]) -> str | None:
    """The first --config.a.b=v whose key does not exist in the config file, described in one line."""
    spec = _config_arg(argv)
    if spec is None:
        return None
    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_avrep_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant or None)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config.") :].split("=", 1)[0]
        node, walked = config, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(walked) or "the config"
                known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else f"a {type(node).__name__} value"
                return f"unknown config key {key} ({arg}): {where} has {known}"
            node, walked = node[part], walked + [part]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, plus: --help exits 0 with the usage and the configs, and an unknown --config.key is one
    line naming it (ml_collections raises a bare AttributeError)."""
    if any(arg in ("--help", "-h", "--helpshort", "-?") for arg in argv[1:]):
        print(__doc__)
        print(_available_configs())
        print("\nFlags:\n" + flags.FLAGS.main_module_help())
        sys.exit(0)
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        message = _unknown_override(argv) or f"cannot apply the --config overrides ({type(e).__name__}: {e})"
        print(f"train.py: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    from avrep.training.loop import Interrupted  # deferred: --help stays fast

    try:
        run(argv)
    except Interrupted as e:
        print(e, file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("[avrep] interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except (CheckpointError, DataError) as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:
        if "config key" not in str(e) or "\n" in str(e):
            raise
        print(f"train.py: {e}", file=sys.stderr)  # a bad config value: the message names the key
        sys.exit(2)


def run(argv):
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
    elif _PIPELINE.value == "sourcefilter":
        from configs.source_filter_pipeline import get_stages
    elif _PIPELINE.value == "se":
        from configs.se_pipeline import get_stages, prepare_data

        print(f"[avrep] noisy test sets -> {prepare_data(_WORKDIR.value, _VARIANT.value)}", flush=True)
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
            if config.get("task") == "source_filter":  # then its f0 / formant subspaces and regressions
                from avrep.evaluation.source_filter import SUBSPACES_FILE, load

                load(workdir, refit=True)
                print(f"[avrep] learnt the source-filter subspaces -> {os.path.join(workdir, SUBSPACES_FILE)}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
