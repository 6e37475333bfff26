"""Per-frame attributes of generated speech and faces, and swap scores.

These are the measuring instruments of the analysis-transformation-synthesis
experiment ([MDVAE] Sec. 3.4.2, Fig. 8): a model encodes two sequences, one latent of
sequence B is replaced by the donor A's, the result is decoded, and attributes
measured on the *generated* audio and video are compared with the same
attributes of A. The ground truth of SynthAV is of no use there (the output is
a new signal), so every attribute is measured from waveforms and pixels. The
paper uses Praat (F1, F2), CREPE (pitch), Py-Feat/OpenFace (AUs, head pose);
the stand-ins here are:

Audio, one value per video frame (frame k is centred on t_k = k / fps, the
centre of the MDVAE STFT frame with hop sample_rate / fps and center=True):

* ``pitch``: f0 in Hz from ``librosa.pyin`` (60-400 Hz) on a 10 ms grid,
  interpolated (in log f0) to the frame times; NaN where pYIN says unvoiced.
  ``voiced`` is 1.0 / 0.0.
* ``f1``, ``f2``: formant frequencies in Hz by the standard LPC root method:
  25 ms Hamming window centred on the frame, pre-emphasis from 50 Hz, Burg LPC
  (``librosa.lpc``) of order 2 + sample_rate / 1000, roots in the upper half
  plane turned into frequency ``angle * sr / 2pi`` and bandwidth
  ``-ln|r| * sr / pi``; roots above 90 Hz with bandwidth below 400 Hz are
  formant candidates, the lowest two are F1 and F2. NaN on frames that are
  unvoiced (pYIN), more than 35 dB below the loudest frame, or not vowel-like
  (lowest candidate above 1200 Hz); an F2 above 3500 Hz is NaN too. Frames of
  voiced consonants (closures, voiced fricatives) still get values, which are
  less reliable than on vowels.
* ``loudness``: RMS level in dBFS over a 1/fps window centred on the frame
  (floor -100 dB); the same definition as SynthAV's ``loudness`` truth, but on
  the (noisy) signal that is there.

Video, from [T, H, W, 3] frames of a frontal, aligned face crop (SynthAV, or
a model's reconstruction of one). Positions are image coordinates in units of
half the image side (x right, y down, the image spans [-1, 1]^2, as in the
SynthAV renderer), so values do not depend on the resolution. Everything is
measured with contrasts inside regions of interest, so no exact colour is
assumed (only lips redder than the skin, and eyes with edges):

1. Layout, once per sequence. The mouth line is the row of the temporal median
   frame, in y in [0.05, 0.65] and the central columns |x| < 0.1, that is most
   both redder (R / (R + G + B)) and darker than the skin (median of the face
   between eyes and mouth); nostrils are dark but not red. The eye line is a
   row 0.3 to 0.6 above the mouth line with much horizontal colour-gradient
   energy sum_c |dI_c/dx| in the eye columns |x| in [0.1, 0.5] (averaged over
   frames, so that motion does not blur it away): the iris and the eye corners
   give the most. Brows can give as much, so of the rows that reach half the
   maximum (local peaks) the lowest is taken.
2. ``mouth_open``: in the central columns (|x| < 0.09), each pixel's
   chromaticity (r, g) = (R, G) / (R + G + B) is compared with the frame's skin
   chromaticity (median of the rows just above and below the mouth region, so
   stubble and lighting are accounted for); pixels more than 0.03 away are
   "mouth" (lips, dark interior, teeth, tongue: all differ in colour from skin,
   and chromaticity ignores shading). The mouth height is the mouth-pixel count
   per column (soft: distance / 0.03, capped at 1) times the pixel size; minus
   the sequence's closed-mouth height (its 5th percentile, which removes the
   lips' thickness), divided by 0.18. On SynthAV the height grows by 0.9 x the
   lip separation, whose maximum is 0.2 image units, so the result is on the
   scale of the generator's ``mouth_open`` (0 closed .. 1 widest).
3. ``eye_open``: the horizontal colour-gradient energy in the eye band (rows
   eye line - 0.09 .. + 0.07, |x| in [0.08, 0.52]): an open eye shows the
   sclera-iris-sclera edges, a closed one a smooth lid under a lash line. The
   band follows the head: it is moved in each frame by the frame's head_x and
   head_y (step 4, measured first in the fixed band) minus their medians.
   Divided by its median over the sequence (the typical open eye); a closed eye
   keeps about 0.2 of it on SynthAV, so ``(ratio - 0.2) / 0.8`` is on the scale
   of the generator's ``eye_open`` (1 open at the sequence's usual aperture ..
   0 closed). It follows the lid down to about 0.3, bottoms out at 0.1-0.3 and
   comes back up a little (to 0.2-0.45) when the eye is fully shut, where the
   lash line lies on the curved lower lid.
4. ``head_x``: the mean of (a) the horizontal centroid of the mouth pixels of
   step 2 over |x| < 0.4 and (b) the mean horizontal centroid of the two eyes'
   non-skin pixels (chromaticity more than 0.06 from the cheeks' just below the
   eyes: sclera, iris, pupil and lashes alike, so the gaze does not move it).
   Eyes and mouth sit on either side of the roll pivot, so roll cancels and the
   result follows yaw (in SynthAV yaw moves the features by 0.42 sin(yaw); the
   measured shift is about 0.85 of that). ``head_y``: the mean vertical
   centroid of the two eyes' gradient energy of step 3 (falls as the pitch,
   chin up, rises; a blink lowers it by about 0.02). ``head_roll``: the angle
   in degrees of the line through the two eyes' gradient-energy centroids
   (positive clockwise, like SynthAV's roll; about 0.65-0.85 of the true
   angle, as the band does not rotate). head_x is absolute (the face is
   symmetric); head_y also depends on where the speaker's eyes are.

Values are NaN where a measurement has nothing to measure (no energy or no
mouth pixels in the region). eye_open and mouth_open are relative to the
sequence (its median eye, its most closed mouth), which assumes eyes open and
a mouth that closes at some point, as in speech. The calibration constants
(0.9, 0.2) and the search bands were measured on SynthAV renderings.

Scores: ``mae`` on raw values and ``time_centred_pcc`` (Pearson correlation
after removing each series' time average over the frames where both are
valid; with several sequences, each pair is centred separately and the
centred frames are pooled into one correlation). ``swap_scores`` applies both
to every attribute.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import librosa
import numpy as np
import scipy.signal

PITCH_FMIN_HZ = 60.0
PITCH_FMAX_HZ = 400.0
_PITCH_HOP_S = 0.01
_FORMANT_WINDOW_S = 0.025
_FORMANT_MAX_BANDWIDTH_HZ = 400.0
_FORMANT_MIN_HZ = 90.0
_FORMANT_MAX_HZ = (1200.0, 3500.0)  # plausible upper limits of F1 and F2
_FORMANT_MIN_LEVEL_DB = -35.0  # relative to the loudest frame
_PRE_EMPHASIS_HZ = 50.0

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_MOUTH_CHROMA_TAU = 0.03
_EYE_CHROMA_TAU = 0.06
_MOUTH_GAIN = 0.18  # mouth-height growth (image units) per unit of SynthAV mouth_open
_EYE_CLOSED_RATIO = 0.2  # eye-band gradient energy of a closed eye / an open one

AUDIO_ATTRIBUTES = ("pitch", "voiced", "f1", "f2", "loudness")
VIDEO_ATTRIBUTES = ("mouth_open", "eye_open", "head_x", "head_y", "head_roll")
ATTRIBUTES = AUDIO_ATTRIBUTES + VIDEO_ATTRIBUTES


# ----------------------------------------------------------------------------
# Audio


def _wav_float(wav) -> np.ndarray:
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / float(-np.iinfo(x.dtype).min)
    return np.nan_to_num(x.astype(np.float64))


def _num_frames(n_samples: int, sample_rate: float, fps: float, n_frames: int | None) -> int:
    if sample_rate <= 0 or fps <= 0:
        raise ValueError(f"sample_rate and fps must be positive, got {sample_rate}, {fps}")
    if n_frames is None:
        return int(round(n_samples * fps / sample_rate))
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    return int(n_frames)


def pitch(
    wav,
    *,
    sample_rate: float,
    fps: float,
    n_frames: int | None = None,
    fmin: float = PITCH_FMIN_HZ,
    fmax: float = PITCH_FMAX_HZ,
) -> tuple[np.ndarray, np.ndarray]:
    """f0 (Hz, NaN where unvoiced) and the voiced mask (bool), per video frame.

    pYIN (``librosa.pyin``, frame 64 ms rounded up to a power of two, hop
    10 ms) runs on its own grid; a video frame is voiced when the nearer pYIN
    frame is, and its f0 is interpolated in log f0 between the two pYIN frames
    around it (the voiced one alone when the other is not). Frames past the end
    of the audio are unvoiced. ``n_frames`` defaults to round(duration * fps).
    """
    x = _wav_float(wav)
    T = _num_frames(len(x), sample_rate, fps, n_frames)
    f0 = np.full(T, np.nan)
    voiced = np.zeros(T, bool)
    hop = max(1, int(round(_PITCH_HOP_S * sample_rate)))
    frame_length = 2 ** int(math.ceil(math.log2(0.064 * sample_rate)))
    if T == 0 or len(x) < frame_length // 2 or not np.any(x):
        return f0, voiced
    p_f0, p_flag, _ = librosa.pyin(x, fmin=fmin, fmax=fmax, sr=sample_rate, frame_length=frame_length, hop_length=hop)
    log_f0 = np.where(p_flag & np.isfinite(p_f0), np.log(np.where(p_f0 > 0, p_f0, 1.0)), np.nan)
    n = len(log_f0)
    pos = np.arange(T) / fps * sample_rate / hop  # fractional pYIN frame index
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    i1 = np.clip(i0 + 1, 0, n - 1)
    w = np.clip(pos - i0, 0.0, 1.0)
    a, b = log_f0[i0], log_f0[i1]
    both = np.isfinite(a) & np.isfinite(b)
    est = np.where(both, (1 - w) * a + w * b, np.where(np.isfinite(a), a, b))
    nearest = np.where(w < 0.5, i0, i1)
    voiced = np.isfinite(log_f0[nearest]) & np.isfinite(est)
    voiced &= np.arange(T) / fps <= len(x) / sample_rate
    f0[voiced] = np.exp(est[voiced])
    return f0, voiced


def _frames_at(x: np.ndarray, T: int, sample_rate: float, fps: float, length: int) -> np.ndarray:
    """[T, length] windows of x centred on the frame times (zero padded)."""
    centres = np.round(np.arange(T) * sample_rate / fps).astype(np.int64)
    padded = np.pad(x, (length, length + 1))
    index = centres[:, None] + length - length // 2 + np.arange(length)[None, :]
    return padded[np.clip(index, 0, len(padded) - 1)]


def loudness(wav, *, sample_rate: float, fps: float, n_frames: int | None = None) -> np.ndarray:
    """RMS level in dBFS over a 1/fps window centred on each frame (floor -100)."""
    x = _wav_float(wav)
    T = _num_frames(len(x), sample_rate, fps, n_frames)
    length = max(1, int(round(sample_rate / fps)))
    frames = _frames_at(x, T, sample_rate, fps, length)
    rms = np.sqrt(np.mean(frames**2, axis=1)) if T else np.zeros(0)
    return 20.0 * np.log10(np.maximum(rms, 1e-5))


def _lpc_formants(frame: np.ndarray, order: int, sample_rate: float, n_formants: int) -> np.ndarray:
    out = np.full(n_formants, np.nan)
    try:
        a = librosa.lpc(frame, order=order)
    except (FloatingPointError, ValueError, np.linalg.LinAlgError):
        return out
    if not np.all(np.isfinite(a)):
        return out
    roots = np.roots(a)
    roots = roots[np.imag(roots) > 0]
    freq = np.angle(roots) * sample_rate / (2 * np.pi)
    bandwidth = -np.log(np.maximum(np.abs(roots), 1e-12)) * sample_rate / np.pi
    keep = (
        (freq > _FORMANT_MIN_HZ) & (freq < sample_rate / 2 - _FORMANT_MIN_HZ) & (bandwidth < _FORMANT_MAX_BANDWIDTH_HZ)
    )
    freq = np.sort(freq[keep])
    if len(freq) == 0 or freq[0] > _FORMANT_MAX_HZ[0]:
        return out
    k = min(n_formants, len(freq))
    out[:k] = freq[:k]
    limits = np.array(_FORMANT_MAX_HZ[:n_formants] + (np.inf,) * max(0, n_formants - 2))
    out[out > limits] = np.nan
    return out


def formants(
    wav,
    *,
    sample_rate: float,
    fps: float,
    n_frames: int | None = None,
    voiced: np.ndarray | None = None,
    n_formants: int = 2,
    order: int | None = None,
) -> np.ndarray:
    """[T, n_formants] formant frequencies (Hz) per video frame by LPC roots.

    See the module docstring for the method. ``voiced`` (bool [T]) limits the
    analysis to those frames; None computes it with :func:`pitch`.
    """
    x = _wav_float(wav)
    T = _num_frames(len(x), sample_rate, fps, n_frames)
    out = np.full((T, n_formants), np.nan)
    if T == 0 or not np.any(x):
        return out
    if voiced is None:
        _, voiced = pitch(x, sample_rate=sample_rate, fps=fps, n_frames=T)
    voiced = np.asarray(voiced, bool)
    if voiced.shape != (T,):
        raise ValueError(f"voiced must have shape ({T},), got {voiced.shape}")
    order = int(order or 2 + round(sample_rate / 1000))
    length = int(round(_FORMANT_WINDOW_S * sample_rate))
    level = loudness(x, sample_rate=sample_rate, fps=fps, n_frames=T)
    active = voiced & (level > level.max() + _FORMANT_MIN_LEVEL_DB)
    alpha = math.exp(-2 * math.pi * _PRE_EMPHASIS_HZ / sample_rate)
    emphasised = scipy.signal.lfilter([1.0, -alpha], [1.0], x)
    frames = _frames_at(emphasised, T, sample_rate, fps, length)
    frames = frames * np.hamming(length)[None, :]
    for k in np.flatnonzero(active):
        out[k] = _lpc_formants(frames[k], order, sample_rate, n_formants)
    return out


def audio_attributes(wav, *, sample_rate: float, fps: float, n_frames: int | None = None) -> dict[str, np.ndarray]:
    """pitch, voiced, f1, f2 and loudness per video frame (see module doc)."""
    x = _wav_float(wav)
    T = _num_frames(len(x), sample_rate, fps, n_frames)
    f0, voiced = pitch(x, sample_rate=sample_rate, fps=fps, n_frames=T)
    fm = formants(x, sample_rate=sample_rate, fps=fps, n_frames=T, voiced=voiced)
    return {
        "pitch": f0,
        "voiced": voiced.astype(np.float64),
        "f1": fm[:, 0],
        "f2": fm[:, 1],
        "loudness": loudness(x, sample_rate=sample_rate, fps=fps, n_frames=T),
    }


# ----------------------------------------------------------------------------
# Video


def _video_float(video) -> np.ndarray:
    """[T, H, W, 3] float32 in [0, 1] (uint8 / 255; floats above 1.5 taken as 0-255)."""
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected video frames [T, H, W, 3], got shape {v.shape}")
    if np.issubdtype(v.dtype, np.integer):
        return v.astype(np.float32) / 255.0
    v = v.astype(np.float32)
    if v.size and np.nanmax(v) > 1.5:
        v = v / 255.0
    return np.clip(np.nan_to_num(v), 0.0, 1.0)


def _coords(n: int) -> np.ndarray:
    """Pixel-centre coordinates of n pixels spanning [-1, 1]."""
    return -1.0 + (np.arange(n, dtype=np.float64) + 0.5) * 2.0 / n


def _band(c: np.ndarray, lo: float, hi: float, px: float) -> np.ndarray:
    """Soft (one-pixel ramp) indicator of lo <= c <= hi."""
    return np.clip(np.minimum(c - lo, hi - c) / px + 0.5, 0.0, 1.0)


def _chroma(v: np.ndarray) -> np.ndarray:
    """(r, g) chromaticity; the small offset keeps near-black pixels stable."""
    return v[..., :2] / (v.sum(-1, keepdims=True) + 3.0 / 255.0)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclasses.dataclass(frozen=True)
class FaceLayout:
    """Where the features are in a sequence (image units, see :func:`locate_face`)."""

    eye_y: float  # eye line
    mouth_y: float  # mouth line


def _peak_rows(profile: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the local maxima of a 1-D profile at least threshold * its max."""
    padded = np.concatenate([[-np.inf], profile, [-np.inf]])
    peaks = np.flatnonzero((padded[1:-1] > padded[:-2]) & (padded[1:-1] >= padded[2:]))
    return peaks[profile[peaks] >= threshold * profile.max()]


def locate_face(video) -> FaceLayout:
    """Mouth and eye lines of a face sequence (module docstring, step 1)."""
    v = _video_float(video)
    if len(v) == 0:
        raise ValueError("locate_face: empty video")
    median = np.median(v, axis=0)
    H, W, _ = median.shape
    ys, xs = _coords(H), _coords(W)
    # Mouth line: redder and darker than the skin, in the central columns.
    skin_area = (np.abs(xs)[None, :] < 0.45) & (ys[:, None] > -0.05) & (ys[:, None] < 0.15)
    skin = np.median(median[skin_area], axis=0) if skin_area.any() else median.mean((0, 1))
    redness = median[..., 0] / (median.sum(-1) + 1e-3) - skin[0] / (skin.sum() + 1e-3)
    darkness = np.clip(1.0 - (median @ _LUMA) / max(float(skin @ _LUMA), 1e-3), 0.0, 1.0)
    score = np.clip(redness, 0.0, None) * darkness
    profile = score[:, np.abs(xs) < 0.1].mean(1) * ((ys > 0.05) & (ys < 0.65))
    mouth_y = float(ys[int(np.argmax(profile))]) if profile.max() > 0 else 0.3
    # Eye line: horizontal gradient energy (mean over frames, so that motion does
    # not blur it away) in the eye columns, 0.3 to 0.6 above the mouth; of the
    # strong rows (peaks of at least half the maximum) the lowest, as the brows
    # above the eyes can be as strong.
    gx = np.abs(np.diff(v, axis=2)).sum(-1)
    xm = 0.5 * (xs[1:] + xs[:-1])
    eye_cols = (np.abs(xm) > 0.1) & (np.abs(xm) < 0.5)
    rows = (ys > max(-0.4, mouth_y - 0.6)) & (ys < min(0.1, mouth_y - 0.3))
    profile = gx[:, :, eye_cols].mean((0, 2)) * rows
    peaks = _peak_rows(profile, 0.5) if profile.max() > 0 else []
    eye_y = float(ys[max(peaks)]) if len(peaks) else mouth_y - 0.45
    return FaceLayout(eye_y=eye_y, mouth_y=mouth_y)


def _eye_band(
    ys: np.ndarray,
    xs: np.ndarray,
    eye_y: float,
    dx: np.ndarray,
    dy: np.ndarray,
    rows: tuple[float, float],
    cols: tuple[float, float],
    px: float,
) -> np.ndarray:
    """[T, H, W] soft eye region, moved by the per-frame offsets dx, dy [T]."""
    band_y = _band(ys[None, :] - dy[:, None], eye_y + rows[0], eye_y + rows[1], px)
    band_x = _band(np.abs(xs[None, :] - dx[:, None]), cols[0], cols[1], px)
    return band_y[:, :, None] * band_x[:, None, :]


def _centroids(mass: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    """Per-frame (x, y) centroids of a [T, H, W] mass; NaN where it is zero."""
    total = mass.sum((1, 2))
    cx = _safe_div((mass * xs[None, None, :]).sum((1, 2)), total)
    cy = _safe_div((mass * ys[None, :, None]).sum((1, 2)), total)
    return cx, cy


def _nanmean2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of two series where both are finite, else the finite one (else NaN)."""
    return np.where(np.isfinite(a) & np.isfinite(b), 0.5 * (a + b), np.where(np.isfinite(a), a, b))


def _offsets(x: np.ndarray) -> np.ndarray:
    """Deviation from the sequence median (0 where unknown), at most 0.15."""
    if not np.isfinite(x).any():
        return np.zeros_like(x)
    return np.clip(np.nan_to_num(x - np.nanmedian(x)), -0.15, 0.15)


def _measure(v: np.ndarray, layout: FaceLayout) -> dict[str, np.ndarray]:
    """All video attributes of float frames [T, H, W, 3] (module docstring)."""
    T, H, W, _ = v.shape
    ys, xs, px = _coords(H), _coords(W), 2.0 / H
    xm = 0.5 * (xs[1:] + xs[:-1])
    chroma = _chroma(v)
    gx = np.abs(np.diff(v, axis=2)).sum(-1)  # [T, H, W - 1]

    # Mouth: chromaticity distance from the skin just above and below it.
    my = layout.mouth_y
    ref_rows = ((ys > my - 0.22) & (ys < my - 0.15)) | ((ys > my + 0.24) & (ys < my + 0.34))
    ref_cols = np.abs(xs) < 0.1
    if ref_rows.any() and ref_cols.any():
        ref = np.median(chroma[:, ref_rows][:, :, ref_cols].reshape(T, -1, 2), axis=1)
        dist = np.sqrt(((chroma - ref[:, None, None, :]) ** 2).sum(-1))
    else:
        dist = np.zeros((T, H, W))
    mouth = np.minimum(1.0, dist / _MOUTH_CHROMA_TAU) * _band(ys, my - 0.14, my + 0.22, px)[None, :, None]
    central = _band(np.abs(xs), -1.0, 0.09, 2.0 / W)
    height = (mouth.sum(1) * central[None, :]).sum(1) / max(central.sum(), 1e-9) * px
    mouth_x, _ = _centroids(mouth * _band(np.abs(xs), -1.0, 0.4, 2.0 / W)[None, None, :], ys, xs)

    # Eyes: non-skin chromaticity (for x) and horizontal gradient energy (for y,
    # roll and the aperture), first in fixed bands, then in bands that follow the
    # head from frame to frame.
    ey = layout.eye_y
    cheek_rows = (ys > ey + 0.1) & (ys < ey + 0.2)
    cheek_cols = (np.abs(xs) > 0.1) & (np.abs(xs) < 0.45)
    if cheek_rows.any() and cheek_cols.any():
        ref = np.median(chroma[:, cheek_rows][:, :, cheek_cols].reshape(T, -1, 2), axis=1)
        eye_dist = np.minimum(1.0, np.sqrt(((chroma - ref[:, None, None, :]) ** 2).sum(-1)) / _EYE_CHROMA_TAU)
    else:
        eye_dist = np.zeros((T, H, W))

    def eyes(dx, dy):
        energy = gx * _eye_band(ys, xm, ey, dx, dy, (-0.09, 0.07), (0.08, 0.52), px)
        left = energy * (xm[None, None, :] < dx[:, None, None])
        right = energy * (xm[None, None, :] >= dx[:, None, None])
        (lx, ly), (rx, ry) = _centroids(left, ys, xm), _centroids(right, ys, xm)
        spots = eye_dist * _eye_band(ys, xs, ey, dx, dy, (-0.08, 0.06), (0.05, 0.55), px)
        side = xs[None, None, :] < dx[:, None, None]
        (cl, _), (cr, _) = _centroids(spots * side, ys, xs), _centroids(spots * ~side, ys, xs)
        return energy.sum((1, 2)), (lx, ly, rx, ry), 0.5 * (cl + cr)

    zero = np.zeros(T)
    _, (_, ly, _, ry), eyes_x = eyes(zero, zero)
    dx, dy = _offsets(_nanmean2(mouth_x, eyes_x)), _offsets(_nanmean2(ly, ry))
    total, (lx, ly, rx, ry), eyes_x = eyes(dx, dy)

    closed = np.percentile(height, 5) if T else 0.0
    typical = np.median(total) if T else 0.0
    aperture = total / typical if typical > 0 else np.full(T, np.nan)
    return {
        "mouth_open": (height - closed) / _MOUTH_GAIN,
        "eye_open": (aperture - _EYE_CLOSED_RATIO) / (1.0 - _EYE_CLOSED_RATIO),
        "head_x": _nanmean2(mouth_x, eyes_x),
        "head_y": _nanmean2(ly, ry),
        "head_roll": np.degrees(np.arctan2(ry - ly, rx - lx)),
    }


def video_attributes(video, layout: FaceLayout | None = None) -> dict[str, np.ndarray]:
    """mouth_open, eye_open, head_x, head_y and head_roll per frame (module doc)."""
    v = _video_float(video)
    if len(v) == 0:
        return {k: np.zeros(0) for k in VIDEO_ATTRIBUTES}
    return _measure(v, layout or locate_face(v))


def mouth_open(video, layout: FaceLayout | None = None) -> np.ndarray:
    """Lip separation per frame, on SynthAV's mouth_open scale (module doc, step 2)."""
    return video_attributes(video, layout)["mouth_open"]


def eye_open(video, layout: FaceLayout | None = None) -> np.ndarray:
    """Eye aperture per frame, on SynthAV's eye_open scale (module doc, step 3)."""
    return video_attributes(video, layout)["eye_open"]


def head_position(video, layout: FaceLayout | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head_x, head_y, head_roll) per frame (module doc, step 4)."""
    out = video_attributes(video, layout)
    return out["head_x"], out["head_y"], out["head_roll"]


def extract_attributes(wav, video, *, sample_rate: float, fps: float) -> dict[str, np.ndarray]:
    """All attributes of one utterance, aligned to its video frames.

    Returns float arrays [T] named as in ``ATTRIBUTES``: pitch (Hz, NaN
    unvoiced), voiced (1/0), f1, f2 (Hz, NaN where not measured), loudness
    (dBFS), mouth_open, eye_open, head_x, head_y (image units) and head_roll
    (degrees). T is the number of video frames; with ``video=None`` only the
    audio attributes are returned, on round(duration * fps) frames, and with
    ``wav=None`` only the video ones.
    """
    if wav is None and video is None:
        raise ValueError("extract_attributes: give a waveform, a video or both")
    out: dict[str, np.ndarray] = {}
    n_frames = None
    if video is not None:
        out.update(video_attributes(video))
        n_frames = len(video)
    if wav is not None:
        out = {**audio_attributes(wav, sample_rate=sample_rate, fps=fps, n_frames=n_frames), **out}
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


# ----------------------------------------------------------------------------
# Scores


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"expected two 1-D series of equal length, got {a.shape} and {b.shape}")
    return a, b


def _is_many(x) -> bool:
    """A list or tuple of series (not a list of numbers)."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and np.ndim(x[0]) >= 1


def _pairs(a, b) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (a, b) pair, or a list of pairs when a and b are lists of series."""
    if _is_many(a) or _is_many(b):
        if not (_is_many(a) and _is_many(b)) or len(a) != len(b):
            raise ValueError("expected two series, or two lists of series of the same length")
        return [_pair(x, y) for x, y in zip(a, b)]
    return [_pair(a, b)]


def time_centred_pcc(a, b, *, min_frames: int = 3) -> float:
    """Pearson correlation after removing each series' time average.

    Frames where either value is NaN (or infinite) are ignored, and the averages
    are taken over the remaining frames. With lists of series, each pair is
    centred on its own and the centred frames are pooled into one correlation,
    so differences between the sequences' averages do not count. NaN when fewer
    than ``min_frames`` frames are valid or either centred series is all zero.
    """
    centred_a, centred_b = [], []
    for x, y in _pairs(a, b):
        valid = np.isfinite(x) & np.isfinite(y)
        x, y = x[valid], y[valid]
        if len(x) == 0:
            continue
        # A constant series stays exactly zero (its mean may differ from it by one ulp).
        centred_a.append(np.zeros_like(x) if np.ptp(x) == 0 else x - x.mean())
        centred_b.append(np.zeros_like(y) if np.ptp(y) == 0 else y - y.mean())
    if not centred_a:
        return float("nan")
    x, y = np.concatenate(centred_a), np.concatenate(centred_b)
    if len(x) < min_frames:
        return float("nan")
    sxx, syy = float(np.dot(x, x)), float(np.dot(y, y))
    if sxx == 0 or syy == 0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / math.sqrt(sxx * syy), -1.0, 1.0))


def mae(a, b, *, min_frames: int = 3) -> float:
    """Mean absolute difference over the frames where both values are finite.

    Lists of series are pooled frame by frame. NaN when fewer than
    ``min_frames`` frames are valid.
    """
    diffs = []
    for x, y in _pairs(a, b):
        valid = np.isfinite(x) & np.isfinite(y)
        diffs.append(np.abs(x[valid] - y[valid]))
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    if len(d) < min_frames:
        return float("nan")
    return float(d.mean())


def swap_scores(
    output_attrs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    donor_attrs: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    attributes: Sequence[str] | None = None,
    *,
    min_frames: int = 3,
) -> dict[str, dict[str, float]]:
    """{attribute: {"mae": ..., "pcc": ...}} of generated outputs against donors.

    ``output_attrs`` and ``donor_attrs`` are ``extract_attributes`` dicts, or
    lists of them (one output per donor; pooled as in :func:`mae` and
    :func:`time_centred_pcc`). A pair of series of different lengths is compared
    over its first min(T_output, T_donor) frames. ``attributes`` defaults to
    every name present in all dicts, in ``ATTRIBUTES`` order first.
    """
    many = not isinstance(output_attrs, Mapping)
    outputs = list(output_attrs) if many else [output_attrs]
    donors = list(donor_attrs) if not isinstance(donor_attrs, Mapping) else [donor_attrs]
    if len(outputs) != len(donors) or not outputs:
        raise ValueError(f"swap_scores: {len(outputs)} outputs for {len(donors)} donors")
    if attributes is None:
        common = set.intersection(*(set(d) for d in outputs + donors))
        attributes = [k for k in ATTRIBUTES if k in common] + sorted(common - set(ATTRIBUTES))
    scores = {}
    for name in attributes:
        a_list, b_list = [], []
        for out, donor in zip(outputs, donors):
            a = np.asarray(out[name], np.float64)
            b = np.asarray(donor[name], np.float64)
            n = min(len(a), len(b))
            a_list.append(a[:n])
            b_list.append(b[:n])
        scores[name] = {
            "mae": mae(a_list, b_list, min_frames=min_frames),
            "pcc": time_centred_pcc(a_list, b_list, min_frames=min_frames),
        }
    return scores
