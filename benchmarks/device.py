"""The device benchmark: every training-step case of benchmarks/run.py at the papers' sizes, in bfloat16 and
float32, on whatever accelerator is present, in under 8 minutes; one JSON line per case (throughput, mfu,
step and peak memory, compile time) on stdout and in ``--out``.

  python benchmarks/device.py --out device.jsonl            # on a GPU / TPU machine
  python benchmarks/device.py --tiny --only vqvae_audio     # a check of the command itself, on CPU

It imports neither Grain, TensorFlow Datasets, ArrayRecord nor librosa (random batches: no input pipeline), so
it runs on an accelerator image that lacks them. The configs need ml_collections (pure Python); where the image
lacks it too, put its wheel beside the tree (``pip download ml_collections --no-deps -d build/wheels``; build/
is git-ignored, carry it with the tree) and this script imports it from there.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _import_ml_collections(wheels: str) -> None:
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        found = sorted(glob.glob(os.path.join(wheels, "ml_collections-*.whl")))
        if not found:
            raise SystemExit(
                f"ml_collections is not installed and no wheel is in {wheels}: run `pip download ml_collections "
                f"--no-deps -d {wheels}` where a package index is reachable, and carry {wheels} with the tree"
            ) from None
        sys.path.append(found[-1])  # a pure-Python wheel is importable as a zip archive


# name -> (which benchmark function, its arguments): the papers' sizes ([MDVAE] batch 1024 for stage 2 and 1024
# frames for the audio tokenizer; [Sadok-thesis]: VQ-MAE batch 128, 2 s clips; the DVAE benchmark: batch 128 x 50).
def _cases(run, tokenizers: str, steps: int) -> dict:
    def vqmae(name, kind, batch, **model):
        config = run._vqmae_config(kind, batch, **model)
        return lambda: run.bench_cached_task_step(name, config, steps, "clips/s", tokenizers)

    cases = {
        "vqvae_audio": lambda: run.bench_train_step("vqvae_audio", run._audio_config(), 32, steps),
        "vqvae_visual": lambda: run.bench_train_step("vqvae_visual", run._visual_config(), 8, steps),
        "mdvae_stage2_b1024": lambda: run.bench_cached_task_step(
            "mdvae_stage2_b1024", run._stage2_config(1024), steps, "sequences/s", tokenizers, time_steps=30
        ),
        "vqmae_av_b128": vqmae("vqmae_av_b128", "av", 128, encoder_fusion="saf", decoder_fusion="saf"),
        "vqmae_av_caf_b128": vqmae("vqmae_av_caf_b128", "av", 128, encoder_fusion="caf", decoder_fusion="caf"),
        "vqmae_s_b128": vqmae("vqmae_s_b128", "audio", 128, mask_unit="frame", mask_ratio=0.8),
    }
    for kind in ("vae", "dkf", "storn", "vrnn", "srnn", "rvae", "dsae"):
        cases[f"dvae_{kind}"] = lambda kind=kind: run.bench_dvae(f"dvae_{kind}", kind, 50, steps)
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    parser.add_argument("--only", nargs="*", default=None, help="case names or prefixes")
    parser.add_argument("--dtypes", nargs="*", default=["bfloat16", "float32"], help="computation dtypes to run")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--budget_s", type=float, default=450, help="skip the cases left after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="2 examples per batch, 1 timed step: checks the command")
    parser.add_argument(
        "--wheels", default=os.path.join(ROOT, "build", "wheels"), help="where ml_collections' wheel is"
    )
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "build", "device_benchmark"))
    args = parser.parse_args(argv)
    _import_ml_collections(args.wheels)

    import jax

    from benchmarks import run

    steps = 1 if args.tiny else args.steps
    cases = _cases(run, os.path.join(args.work_dir, "random_tokenizers"), steps)
    chosen = [n for n in cases if args.only is None or any(n == o or n.startswith(o) for o in args.only)]
    start = time.perf_counter()
    out = open(args.out, "a") if args.out else None
    for dtype in args.dtypes:
        for name in chosen:
            run.OVERRIDES.clear()
            run.OVERRIDES["model.dtype"] = dtype
            if args.tiny:
                run.OVERRIDES["data.examples_per_batch"] = 2
            if time.perf_counter() - start > args.budget_s:
                result = {"name": name, "dtype": dtype, "skipped": f"over the {args.budget_s:.0f} s budget"}
            else:
                result = cases[name]()
            result.update(elapsed_s=round(time.perf_counter() - start, 1), backend=jax.default_backend())
            line = json.dumps(result)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
    if out:
        out.close()


if __name__ == "__main__":
    main()
