"""Latent manipulation with a trained MDVAE ([MDVAE] Sec. 3.4–3.5; [Sadok-thesis] App. B.3–B.4).

* **Analysis-transformation-synthesis**: windows A (donors) and B (recipients) of T frames from
  the test split; B is decoded with one latent (w, z_av, z_a or z_v) taken from A, and
  attributes measured on the generated audio and video (avrep.evaluation.attributes) are
  compared with those of the real A: MAE on raw values and the time-centred PCC, pooled over
  all (A, B) pairs with A != B. The row "none" decodes B unchanged: the level a latent must beat.
  Generated audio has no phase of its own: waveforms come from Griffin-Lim (32 iterations).
* **Interpolation** of w between two sequences (their dynamics kept from the first), and
  **conditional generation** (a sequence continued by following the learned priors' means):
  PNG figures and WAV files.
* **Audiovisual denoising**: Gaussian noise on the mouth or the eye region of the 6 central
  frames of 10-frame sequences, audio clean; PSNR / SSIM on the corrupted region only.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import numpy as np

from avrep import audio as audio_lib
from avrep.evaluation import attributes as attributes_lib
from avrep.evaluation.sequence import LATENTS, SequenceModel
from avrep.evaluation.tables import summarize_rows
from avrep.features.cache import record_meta

SWAP_ATTRIBUTES = ("pitch", "f1", "f2", "loudness", "mouth_open", "eye_open", "head_x", "head_y")


def _first_windows(
    seq: SequenceModel, source, count: int, different_speakers: bool = False
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The first T frames of the first ``count`` test utterances with >= T frames (of as many different
    speakers as the split has, if asked): (utterances, features)."""
    indices = range(min(len(source), 4 * count))
    if different_speakers:
        first_of_speaker = {}
        for i in range(len(source)):
            first_of_speaker.setdefault(record_meta(source[i], i).get("speaker", i), i)
        firsts = sorted(first_of_speaker.values())  # then other utterances, if the split has one speaker
        indices = (firsts + [i for i in range(len(source)) if i not in first_of_speaker.values()])[: 4 * count]
    utts, xs, _ = seq.split_features(source, indices=indices)
    utts, xs = utts[:count], xs[:count]
    if len(utts) < 2:
        raise ValueError(f"{source.description}: need at least 2 utterances of >= {seq.t} frames, got {len(utts)}")
    return utts, {m: np.stack([x[m][: seq.t] for x in xs]) for m in ("audio", "visual")}


@functools.lru_cache(maxsize=None)
def _griffin_lim(hop: int, window: str, iters: int):
    """One compiled Griffin-Lim per setting (power [N, T, bins] -> waveforms [N, (T - 1) * hop])."""
    return jax.jit(
        functools.partial(audio_lib.griffin_lim, n_iter=iters, hop=hop, window=window, key=jax.random.key(0))
    )


def _signals(seq: SequenceModel, recon: dict[str, np.ndarray], gl_iters: int) -> dict[str, np.ndarray]:
    """Decoded features {modality: [N, T, ·]} -> {"wav": [N, samples] (Griffin-Lim), "video": [N, T, H, W, 3]}."""
    n, t = next(iter(recon.values())).shape[:2]
    flat = seq.to_signals({m: v.reshape(n * t, -1) for m, v in recon.items()})
    out = {}
    if "video" in flat:
        out["video"] = flat["video"].reshape(n, t, *flat["video"].shape[1:])
    if "power" in flat:
        power = flat["power"].reshape(n, t, -1)
        gl = _griffin_lim(int(seq.config.audio["hop"]), str(seq.config.audio["window"]), gl_iters)
        out["wav"] = np.concatenate([np.asarray(gl(power[s : s + 16])) for s in range(0, n, 16)])
    return out


def _attributes(wav, video, audio_cfg, fps: int) -> dict[str, np.ndarray]:
    return attributes_lib.extract_attributes(wav, video, sample_rate=int(audio_cfg["sample_rate"]), fps=fps)


def swap_experiment(seq: SequenceModel, source, *, count: int = 8, gl_iters: int = 32) -> list[dict]:
    """Rows {"latent", "<attribute>_mae", "<attribute>_pcc", "n" (pairs)} for "none" and each latent of the model."""
    if seq.family != "mdvae":
        raise ValueError(f"{seq.name}: the transformation experiment swaps MDVAE latents (w, z_av, z_a, z_v)")
    utts, x = _first_windows(seq, source, count)
    cfg, fps, t = seq.config.audio, int(seq.config.data.fps), seq.t
    samples = (t - 1) * int(cfg["hop"])  # what Griffin-Lim returns for T frames (centre padding removed)
    donors = [_attributes(u["wav"][:samples], u["video"][:t], cfg, fps) for u in utts]
    latents = seq.encode(x["audio"], x["visual"])
    pairs = [(a, b) for a in range(len(utts)) for b in range(len(utts)) if a != b]
    rows = []
    for name in ("none",) + LATENTS["mdvae"]:
        swapped = {k: np.stack([v[a] if k == name else v[b] for a, b in pairs]) for k, v in latents.items()}
        signals = _signals(seq, seq.decode(swapped), gl_iters)
        outputs = [_attributes(signals["wav"][i], signals["video"][i], cfg, fps) for i in range(len(pairs))]
        scores = attributes_lib.swap_scores(outputs, [donors[a] for a, _ in pairs], list(SWAP_ATTRIBUTES))
        row = {"latent": name, "n": len(pairs)}
        for attr, s in scores.items():
            row[f"{attr}_pcc"], row[f"{attr}_mae"] = s["pcc"], s["mae"]
        rows.append(row)
    return rows


def interpolation_and_generation(
    seq: SequenceModel, source, out_dir: str, run: str, *, steps: int = 5, generate_frames: int = 30, gl_iters: int = 32
) -> list[str]:
    """w interpolation between two test sequences and a continuation from the priors: PNGs and WAVs."""
    import soundfile as sf

    utts, x = _first_windows(seq, source, 2, different_speakers=True)
    latents = seq.encode(x["audio"], x["visual"])
    alphas = np.linspace(0.0, 1.0, steps)
    interp = {k: np.repeat(v[:1], steps, axis=0) for k, v in latents.items()}
    interp["w"] = (1 - alphas)[:, None] * latents["w"][0] + alphas[:, None] * latents["w"][1]
    signals = _signals(seq, seq.decode(interp), gl_iters)
    sr, written = int(seq.config.audio["sample_rate"]), []
    _frame_grid(
        signals["video"],
        [f"a={a:.2f}" for a in alphas],
        os.path.join(out_dir, f"{run}_interpolation.png"),
        f"{seq.name}: w from sequence 1 (a=0) to sequence 2 (a=1), dynamics of sequence 1",
    )
    written.append(os.path.join(out_dir, f"{run}_interpolation.png"))
    for i in (0, steps // 2, steps - 1):
        path = os.path.join(out_dir, f"{run}_interpolation_a{alphas[i]:.2f}.wav")
        sf.write(path, signals["wav"][i] / max(1e-6, np.abs(signals["wav"][i]).max()), sr)
        written.append(path)

    cont = seq.continue_sequence(x["audio"][:1], x["visual"][:1], generate_frames)
    signals = _signals(seq, cont, gl_iters)
    video = signals["video"][0]
    rows = [video[: seq.t], video[seq.t :]]
    _frame_grid(
        np.stack([r[: min(len(rows[0]), len(rows[1]))] for r in rows]),
        ["analysed", "generated"],
        os.path.join(out_dir, f"{run}_generation.png"),
        f"{seq.name}: {seq.t} analysed frames, then {generate_frames} from the learned priors (means)",
    )
    path = os.path.join(out_dir, f"{run}_generation.wav")
    sf.write(path, signals["wav"][0] / max(1e-6, np.abs(signals["wav"][0]).max()), sr)
    return written + [os.path.join(out_dir, f"{run}_generation.png"), path]


def _frame_grid(videos: np.ndarray, labels: Sequence[str], path: str, title: str, columns: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.linspace(0, videos.shape[1] - 1, columns).astype(int)
    fig, axes = plt.subplots(len(videos), columns, figsize=(1.3 * columns, 1.4 * len(videos)), squeeze=False)
    for r, (video, label) in enumerate(zip(videos, labels)):
        for c, t in enumerate(idx):
            axes[r, c].imshow(np.clip(video[t], 0, 1))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c == 0:
                axes[r, c].set_ylabel(label, fontsize=8)
            if r == 0:
                axes[r, c].set_title(f"t={t}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ denoising

DENOISE_REGIONS = ("mouth", "eyes")


def region_mask(video: np.ndarray, region: str) -> np.ndarray:
    """Boolean [H, W] box around the mouth or both eyes, placed from the face layout of the clean video
    (attributes.locate_face: feature lines in [-1, 1] image units; the faces are centred crops)."""
    if region not in DENOISE_REGIONS:
        raise ValueError(f"denoising region must be one of {DENOISE_REGIONS}, got {region!r}")
    layout = attributes_lib.locate_face(video)
    h, w = video.shape[1:3]
    y = -1.0 + (np.arange(h) + 0.5) * 2.0 / h
    x = -1.0 + (np.arange(w) + 0.5) * 2.0 / w
    centre, half_height, half_width = (layout.mouth_y, 0.18, 0.32) if region == "mouth" else (layout.eye_y, 0.14, 0.60)
    return (np.abs(y - centre)[:, None] <= half_height) & (np.abs(x)[None, :] <= half_width)


def _region_scores(clean: np.ndarray, out: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR over the region's pixels and the mean of the SSIM map (Gaussian window, sigma 1.5) over them."""
    from skimage.metrics import structural_similarity

    mse = float(np.mean((out[:, mask] - clean[:, mask]) ** 2))
    ssim = [
        structural_similarity(
            c,
            o,
            channel_axis=-1,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            full=True,
        )[1][mask].mean()
        for c, o in zip(clean, out)
    ]
    return {"psnr": 10 * np.log10(1.0 / max(mse, 1e-12)), "ssim": float(np.mean(ssim))}


def denoising_experiment(
    models: Sequence[SequenceModel],
    source,
    *,
    count: int = 24,
    variances: Sequence[float] = (0.01, 0.05, 0.2),
    length: int = 10,
    corrupted: int = 6,
    seed: int = 0,
) -> list[dict]:
    """Rows {model, region, variance, psnr, psnr_std, ssim, ssim_std, n}.

    Sequences of ``length`` frames (the first frames of ``count`` test utterances) whose ``corrupted``
    central frames get N(0, variance) noise (pixels in [0, 1], clipped) in the region; audio clean.
    The VQ-VAE row is the first model's visual tokenizer alone (encode, quantise, decode)."""
    base = models[0]
    utts, _, _ = base.split_features(source, limit=count)
    rng = np.random.default_rng(seed)
    first = (length - corrupted) // 2
    rows = []
    for region in DENOISE_REGIONS:
        masks = [region_mask(u["video"][:length], region) for u in utts]
        for variance in variances:
            noisy_utts = []
            for u, mask in zip(utts, masks):
                video = u["video"][:length].astype(np.float32) / 255.0
                noise = rng.normal(0.0, np.sqrt(variance), video[first : first + corrupted].shape)
                video[first : first + corrupted] += noise * mask[None, :, :, None]
                noisy = np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)
                noisy_utts.append(dict(u, video=noisy, windows=u["windows"][:length], num_frames=length))
            clean = [u["video"][first : first + corrupted].astype(np.float32) / 255.0 for u in utts]
            candidates = [("VQ-VAE-visual", None)] + [(m.name, m) for m in models]
            for name, model in candidates:
                xs = (model or base).features(noisy_utts)
                if model is None:  # the tokenizer alone
                    videos = [base.to_signals({"visual": x["visual"]})["video"] for x in xs]
                else:
                    latents = model.encode(np.stack([x["audio"] for x in xs]), np.stack([x["visual"] for x in xs]))
                    recon = model.decode(latents)["visual"]
                    videos = [model.to_signals({"visual": r})["video"] for r in recon]
                per = [
                    _region_scores(c, np.clip(v[first : first + corrupted], 0, 1), mask)
                    for v, c, mask in zip(videos, clean, masks)
                ]
                rows.append(
                    {"model": name, "region": region, "variance": variance, **summarize_rows(per, ("psnr", "ssim"))}
                )
    return rows
