"""Imports a released checkpoint into an avrep run directory.

python -m avrep.convert dvae  --weights FILE(.npz|.pt) [--config-ini FILE] [--preset NAME] --out RUN_DIR
python -m avrep.convert vqvae --weights FILE(.npz|.pt) [--preset vqmae|vqmae_s|mdvae] [--batch-stats MODE] --out RUN_DIR

Then ``avrep.load_checkpoint(RUN_DIR)`` loads the model and ``python evaluate.py --workdir RUN_DIR`` evaluates it
(on SynthAV's speech unless ``--dataset``). A torch file needs ``pip install 'avrep[torch]'``.
"""

from __future__ import annotations

import argparse
import sys

from avrep.models.dvae import PRESETS as DVAE_PRESETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avrep.convert", description=__doc__.split("\n\n")[0])
    families = parser.add_subparsers(dest="family", required=True)
    dvae = families.add_parser("dvae", help="a DVAE-family model (DVAE benchmark, DVAE_SE)")
    vqvae = families.add_parser("vqvae", help="a speech VQ-VAE (VQ-MAE-S, code-mdvae)")
    for sub in (dvae, vqvae):
        sub.add_argument(
            "--weights", required=True, help="the weight file: a torch checkpoint, or its state_dict as .npz"
        )
        sub.add_argument("--out", required=True, help="the run directory to write")
        sub.add_argument("--name", default=None, help="the run's name in tables (default: the --out folder's name)")
        sub.add_argument("--dataset", default="synthav/speech", help="config data.name: what evaluate.py scores it on")
        sub.add_argument("--data-dir", default="", help="config data.data_dir (where the dataset is prepared)")
    dvae.add_argument("--config-ini", default=None, help="the authors' config.ini beside the weights")
    dvae.add_argument("--preset", default=None, choices=sorted(DVAE_PRESETS), help="a preset the weights must match")
    vqvae.add_argument(
        "--preset",
        default=None,
        choices=("vqmae", "vqmae_s", "mdvae"),
        help="the STFT (default: vqmae with BatchNorm, else mdvae; vqmae_s: hop 256, for configs/vqmae.py:audio,paper)",
    )
    vqvae.add_argument(
        "--batch-stats", default="running", choices=("running", "batch"), help="BatchNorm statistics at inference"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from avrep.convert import importing

    common = dict(name=args.name, data_name=args.dataset, data_dir=args.data_dir)
    try:
        if args.family == "dvae":
            out = importing.import_dvae(args.weights, args.out, args.config_ini, preset=args.preset, **common)
        else:
            out = importing.import_speech_vqvae(
                args.weights, args.out, preset=args.preset, batch_stats_mode=args.batch_stats, **common
            )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[avrep] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
