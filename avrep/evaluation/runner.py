"""Evaluates every run found in a workdir and writes the metric tables into ``<workdir>/eval/``."""
from __future__ import annotations

import os
from typing import Callable

from avrep.evaluation import resynthesis
from avrep.evaluation.tables import write_table
from avrep.training.checkpointing import CHECKPOINT_SUBDIR, load_checkpoint
from data_pipelines.pipelines import open_source

AUDIO_TABLE = ("analysis_resynthesis_audio",
               "Analysis-resynthesis, audio (form of MDVAE paper Table 2)",
               [("stoi", "STOI ↑", 3), ("pesq", "PESQ (wb) ↑", 2), ("si_sdr", "SI-SDR (dB) ↑", 2)])
VISUAL_TABLE = ("analysis_resynthesis_visual",
                "Analysis-resynthesis, visual (form of MDVAE paper Table 3)",
                [("mse", "MSE ↓", 4), ("psnr", "PSNR (dB) ↑", 2), ("scc", "SCC ↑", 3), ("ssim", "SSIM ↑", 3)])
NOTES = {
    "analysis_resynthesis_audio": [
        "Mean ± std over test utterances (speaker-disjoint test split). PESQ is wide-band (ITU-T P.862.2, "
        "16 kHz). 'original phase': inverse STFT of the reconstructed power with the input's phase; "
        "Griffin-Lim rows rebuild the phase from power alone (fast Griffin-Lim, momentum 0.99, random init "
        "with a fixed key). STFT: Hann window, n_fft 1024, centre zero-padding.",
    ],
    "analysis_resynthesis_visual": [
        "Mean ± std over test utterances of the per-utterance mean over frames. Pixels in [0, 1] (data range 1). "
        "SSIM: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, mean over RGB channels (Wang et al. 2004). "
        "SCC: Laplacian high-pass then windowed correlation coefficient (8x8), as the sewar package.",
    ],
}
MODEL_NAMES = {"vqvae_audio": "VQ-VAE-audio", "vqvae_visual": "VQ-VAE-visual"}


def discover_runs(workdir: str) -> list[str]:
    """``workdir`` itself if it is a run, else its sub-directories that hold checkpoints."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir} does not exist")
    if os.path.isdir(os.path.join(workdir, CHECKPOINT_SUBDIR)):
        return [workdir]
    runs = sorted(os.path.join(workdir, d) for d in os.listdir(workdir)
                  if os.path.isdir(os.path.join(workdir, d, CHECKPOINT_SUBDIR)))
    if not runs:
        raise FileNotFoundError(f"no trained run under {workdir} (expected {CHECKPOINT_SUBDIR}/ in it or in "
                                f"its sub-directories); train first with `python train.py --workdir {workdir}`")
    return runs


def _evaluate_vqvae(model, run_dir, out_dir, rows, limit, griffin_lim_iters, log):
    config = model.config
    source = open_source(config.data.name, config.data.eval_split, config.data.data_dir)
    name = MODEL_NAMES.get(config.name, config.name)
    run = os.path.basename(os.path.normpath(run_dir))
    if config.model.modality == "audio":
        result = resynthesis.audio_resynthesis(model, source, limit=limit, griffin_lim_iters=griffin_lim_iters)
        for condition, summary in result["conditions"].items():
            model_name = "original signal" if condition.startswith("reference") else name
            rows.setdefault(AUDIO_TABLE[0], []).append({"model": model_name, "condition": condition, "run": run,
                                                        **summary})
        resynthesis.spectrogram_figure(result["example"], os.path.join(out_dir, f"{run}_spectrograms.png"),
                                       f"{name}: {source.description}")
    else:
        result = resynthesis.visual_resynthesis(model, source, limit=limit)
        rows.setdefault(VISUAL_TABLE[0], []).append({"model": name, "condition": "-", "run": run,
                                                     **result["summary"]})
        resynthesis.faces_figure(result["example"], os.path.join(out_dir, f"{run}_faces.png"), name)
    log(f"[avrep] evaluated {run_dir} (step {model.step})")


EVALUATORS: dict[str, Callable] = {"vqvae": _evaluate_vqvae}


def evaluate_workdir(workdir: str, *, limit: int | None = None, griffin_lim_iters: int = 32,
                     log: Callable[[str], None] = print) -> dict[str, tuple[str, str]]:
    runs = discover_runs(workdir)  # before creating eval/, so a mistyped --workdir is not created
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    for run_dir in runs:
        model = load_checkpoint(run_dir)
        evaluator = EVALUATORS.get(model.config.get("task"))
        if evaluator is None:
            raise ValueError(f"{run_dir}: no evaluator for task {model.config.get('task')!r}; "
                             f"known: {sorted(EVALUATORS)}")
        evaluator(model, run_dir, out_dir, rows, limit, griffin_lim_iters, log)
    written = {}
    for name, title, metrics in (AUDIO_TABLE, VISUAL_TABLE):
        if name in rows:
            written[name] = write_table(out_dir, name, title, rows[name], ("model", "condition", "run"), metrics,
                                        NOTES[name])
            log(f"[avrep] wrote {written[name][0]}")
    return written
